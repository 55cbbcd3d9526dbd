"""The trainer's and the critic's checkpoint handlers, in real role processes: a path in
a message must name a step folder inside the run's checkpoints/, and a crafted
checkpoint there cannot run code in the role. A refused ask comes back as a
RemoteError; the role keeps serving."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from protocols.rl import LoadCheckpoint, SaveCheckpoint
from protocols.weights import PublishWeights
from runtime.client import Client
from runtime.errors import RemoteError
from tests.unit.test_generation import tiny_model, tiny_tokenizer

pytestmark = pytest.mark.timeout(300)

TRAINER = "roles.trainer:Trainer"
CRITIC = "roles.critic:Critic"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-qwen2")
    tiny_model().save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


class RunsCode:
    """What a crafted pickle carries: unpickling it calls open(path, "w")."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (str(self.path), "w"))


async def test_a_trainer_refuses_checkpoint_paths_outside_the_runs_checkpoints_and_keeps_serving(
    spawn, model_dir: Path, tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    trainer = await spawn(TRAINER, "trainer-0", run_dir=run, config={"model": str(model_dir)}, ready_timeout=180)
    elsewhere = tmp_path / "elsewhere" / "step_1"
    elsewhere.mkdir(parents=True)
    inside = run / "checkpoints" / "step_1"
    inside.mkdir(parents=True)
    async with Client("test") as client:
        with pytest.raises(RemoteError, match=r"refused: .*checkpoints/step_N") as refused:
            await client.ask(trainer.endpoint, SaveCheckpoint(str(elsewhere)), timeout=60)
        assert str(elsewhere) in str(refused.value)
        assert list(elsewhere.iterdir()) == []  # nothing written there
        escaping = inside / ".." / ".." / ".." / "elsewhere" / "step_1"
        with pytest.raises(RemoteError, match="refused"):
            await client.ask(trainer.endpoint, LoadCheckpoint(str(escaping)), timeout=60)
        saved = await client.ask(trainer.endpoint, SaveCheckpoint(str(inside)), timeout=120)  # still serving
        loaded = await client.ask(trainer.endpoint, LoadCheckpoint(str(inside)), timeout=120)
    assert (inside / "trainer" / ".metadata").is_file() and (inside / "trainer_meta.json").is_file()
    assert loaded.version == saved.version


async def test_restored_weights_are_published_again_under_the_version_they_were_saved_with(
    spawn, model_dir: Path, tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    trainer = await spawn(TRAINER, "trainer-0", run_dir=run, config={"model": str(model_dir)}, ready_timeout=180)
    folder = run / "checkpoints" / "step_1"
    async with Client("test") as client:
        with pytest.raises(RemoteError, match="no version to publish again"):
            await client.ask(trainer.endpoint, PublishWeights(republish=True), timeout=60)
        assert (await client.ask(trainer.endpoint, PublishWeights(), timeout=60)).version == 1  # step 1's weights
        saved = await client.ask(trainer.endpoint, SaveCheckpoint(str(folder)), timeout=120)
        assert (await client.ask(trainer.endpoint, PublishWeights(), timeout=60)).version == 2  # the stopped session went on
        loaded = await client.ask(trainer.endpoint, LoadCheckpoint(str(folder)), timeout=120)
        republished = await client.ask(trainer.endpoint, PublishWeights(republish=True), timeout=60)
        following = await client.ask(trainer.endpoint, PublishWeights(), timeout=60)
    assert saved.version == loaded.version == republished.version == 1
    assert following.version == 2  # as in a run that never stopped: version n after step n


async def test_a_crafted_trainer_checkpoint_in_the_run_cannot_run_code_in_the_trainer(
    spawn, model_dir: Path, tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    trainer = await spawn(TRAINER, "trainer-0", run_dir=run, config={"model": str(model_dir)}, ready_timeout=180)
    crafted = run / "checkpoints" / "step_2"
    async with Client("test") as client:
        await client.ask(trainer.endpoint, SaveCheckpoint(str(crafted)), timeout=120)  # a real one, then its metadata replaced
        ran = tmp_path / "code-ran"
        (crafted / "trainer" / ".metadata").write_bytes(pickle.dumps(RunsCode(ran)))
        with pytest.raises(RemoteError, match=r"refers to (builtins|io)\.open"):
            await client.ask(trainer.endpoint, LoadCheckpoint(str(crafted)), timeout=120)
    assert not ran.exists()


async def test_a_crafted_critic_checkpoint_cannot_run_code_even_where_torch_is_told_to_unpickle_anything(
    spawn, model_dir: Path, tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    # the variable users set to load old pickles: it only applies where weights_only is not given
    critic = await spawn(CRITIC, "critic-0", run_dir=run, config={"model": str(model_dir)}, ready_timeout=180,
                         env={"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"})
    folder = run / "checkpoints" / "step_1"
    folder.mkdir(parents=True)
    ran = tmp_path / "code-ran"
    async with Client("test") as client:
        torch.save({"model": RunsCode(ran)}, folder / "critic.pt")
        with pytest.raises(RemoteError, match=r"(builtins|io)\.open"):
            await client.ask(critic.endpoint, LoadCheckpoint(str(folder)), timeout=120)
        assert not ran.exists()
        await client.ask(critic.endpoint, SaveCheckpoint(str(folder)), timeout=120)  # still serving
        await client.ask(critic.endpoint, LoadCheckpoint(str(folder)), timeout=120)  # a real one loads
        with pytest.raises(RemoteError, match=r"refused: .*checkpoints/step_N"):
            await client.ask(critic.endpoint, SaveCheckpoint(str(tmp_path)), timeout=60)
    assert not (tmp_path / "critic.pt").exists()
