"""torch.distributed.checkpoint folders load through an allow-listed unpickler: a real
checkpoint loads, a crafted ``.metadata`` cannot run code or point outside its folder."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict

from runtime.checkpoint_reader import UnsafeCheckpointError, load_distributed_checkpoint


@pytest.fixture(autouse=True)
def single_process():  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():  # "torch.distributed is disabled ... single process": it is
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def trained(seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2)).to(torch.bfloat16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(3, 4, dtype=torch.bfloat16)).sum().backward()
    optimizer.step()
    return model, optimizer


def saved(folder: Path) -> dict[str, torch.Tensor]:
    model, optimizer = trained(0)
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(folder))
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


def test_a_real_checkpoint_loads_its_model_and_optimizer_state(tmp_path: Path) -> None:
    expected = saved(tmp_path / "trainer")
    model, optimizer = trained(1)
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    load_distributed_checkpoint(state, tmp_path / "trainer")
    for name, tensor in expected.items():
        torch.testing.assert_close(state["model"][name], tensor)
    assert all(entry["step"] == 1 for entry in state["optim"]["state"].values())


class RunsCode:
    """What a crafted pickle carries: unpickling it calls open(path, "w")."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (str(self.path), "w"))


def test_metadata_that_would_run_code_is_refused_before_anything_runs(tmp_path: Path) -> None:
    saved(tmp_path / "trainer")
    ran = tmp_path / "code-ran"
    (tmp_path / "trainer" / ".metadata").write_bytes(pickle.dumps(RunsCode(ran)))
    model, optimizer = trained(1)
    model_state, optim_state = get_state_dict(model, optimizer)
    with pytest.raises(UnsafeCheckpointError, match=r"\.metadata refers to (builtins|io)\.open"):
        load_distributed_checkpoint({"model": model_state, "optim": optim_state}, tmp_path / "trainer")
    assert not ran.exists()


def test_metadata_whose_data_entries_point_outside_the_folder_is_refused(tmp_path: Path) -> None:
    saved(tmp_path / "trainer")
    metadata_path = tmp_path / "trainer" / ".metadata"
    metadata = pickle.loads(metadata_path.read_bytes())  # the test's own file: trusted here
    for info in metadata.storage_data.values():
        info.relative_path = "../../secrets"
    metadata_path.write_bytes(pickle.dumps(metadata))
    model, optimizer = trained(1)
    model_state, optim_state = get_state_dict(model, optimizer)
    with pytest.raises(UnsafeCheckpointError, match=r"'\.\./\.\./secrets'"):
        load_distributed_checkpoint({"model": model_state, "optim": optim_state}, tmp_path / "trainer")
