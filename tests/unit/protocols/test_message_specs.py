"""Message types say which dtypes and shapes their tensors take (protocols.specs), and
decoding refuses anything else with a ProtocolError naming the field, before any
handler runs."""

from __future__ import annotations

from typing import Annotated

import pytest
import torch

from protocols.batch import Batch
from protocols.errors import ProtocolError
from protocols.messages import from_payload, message, to_payload
from protocols.rl import ComputeLogProbs, Generate, Sampling, Train, Values
from protocols.specs import FLOATING, BatchSpec, TensorSpec
from roles.pipeline import Item
from tests.unit.protocols.payloads import round_trip


@message("test_specs.sample")
class Sample:  # test -> test
    values: Annotated[torch.Tensor, TensorSpec(FLOATING, ndim=2)]


@message("test_specs.rows")
class Rows:  # test -> test
    batch: Annotated[Batch, BatchSpec(
        tensors={"ids": TensorSpec((torch.int64,), ndim=2), "mask": TensorSpec(like="ids")},
        optional={"scores": TensorSpec(FLOATING, ndim=1)},
        columns={"text": str},
    )]


def decode(msg_type: type, **fields: object) -> object:
    return from_payload(msg_type.KIND, fields)


def test_a_tensor_of_an_accepted_dtype_and_rank_passes():
    assert decode(Sample, values=torch.zeros(2, 3, dtype=torch.bfloat16)).values.dtype == torch.bfloat16


@pytest.mark.parametrize("tensor, complaint", [
    (torch.zeros(2, 3, dtype=torch.int64), "expected a tensor of dtype float16, bfloat16, float32, float64, got int64"),
    (torch.zeros(2, 3, dtype=torch.complex64), "expected a tensor of dtype .*, got complex64"),
    (torch.zeros(6), r"expected a 2-d tensor, got shape \[6\]"),
    (torch.zeros(1, 2, 3), r"expected a 2-d tensor, got shape \[1, 2, 3\]"),
])
def test_a_tensor_of_another_dtype_or_rank_is_refused_naming_the_field(tensor, complaint):
    with pytest.raises(ProtocolError, match=rf"field test_specs.sample.values: {complaint}"):
        decode(Sample, values=tensor)


def rows(**tensors: torch.Tensor) -> dict:
    columns = {"text": ["a", "b"]}
    return Batch({"ids": torch.zeros(2, 4, dtype=torch.int64), "mask": torch.ones(2, 4), **tensors}, columns).__wire__()


def test_a_batch_with_the_declared_columns_passes():
    assert decode(Rows, batch=rows(scores=torch.zeros(2))).batch.size == 2


def test_a_missing_tensor_column_is_named():
    wire = Batch({"ids": torch.zeros(2, 4, dtype=torch.int64)}, {"text": ["a", "b"]}).__wire__()
    with pytest.raises(ProtocolError, match=r"field test_specs.rows.batch: missing tensor columns \['mask'\]"):
        decode(Rows, batch=wire)


def test_a_column_whose_shape_differs_from_the_one_it_must_match_is_refused():
    with pytest.raises(ProtocolError, match=r"tensors\['mask'\]: shape \[2, 5\] differs from 'ids''s \[2, 4\]"):
        decode(Rows, batch=rows(mask=torch.ones(2, 5)))


def test_an_optional_column_is_checked_when_present():
    with pytest.raises(ProtocolError, match=r"tensors\['scores'\]: expected a 1-d tensor"):
        decode(Rows, batch=rows(scores=torch.zeros(2, 1)))


def test_a_non_tensor_column_is_checked_row_by_row():
    wire = rows()
    wire["columns"]["text"] = ["a", 7]
    with pytest.raises(ProtocolError, match=r"columns\['text'\]\[1\]: expected str, got int"):
        decode(Rows, batch=wire)


def test_a_spec_on_a_field_of_another_type_is_a_definition_error():
    with pytest.raises(TypeError, match="TensorSpec annotates torch.Tensor"):
        @message("test_specs.wrong")
        class Wrong:  # test -> test
            values: Annotated[list[int], TensorSpec(FLOATING)]


# ------------------------------------------------------------- the real message types
def sequences(rows: int = 2, prompt: int = 3, response: int = 4) -> dict[str, torch.Tensor]:
    return {
        "prompt_ids": torch.zeros(rows, prompt, dtype=torch.int64), "prompt_mask": torch.ones(rows, prompt),
        "response_ids": torch.zeros(rows, response, dtype=torch.int64), "response_mask": torch.ones(rows, response),
    }


def test_the_messages_the_roles_send_pass_their_own_specs():
    batch = Batch({**sequences(), "advantages": torch.zeros(2, 4), "old_logprobs": torch.zeros(2, 4)})
    train = Train(batch, step=1, temperature=1.0, kl_coef=0.0)
    assert from_payload(Train.KIND, round_trip(to_payload(train))).batch.size == 2
    sampling = Sampling(n=2, temperature=0.7, top_p=0.9, top_k=5, max_new_tokens=8, stop=("\n",), seed=None, ignore_eos=False)
    generate = Generate(Batch(columns={"prompt_ids": [[1, 2], [3]]}), sampling)
    received = from_payload(Generate.KIND, round_trip(to_payload(generate)))
    assert received.batch.size == 2 and received.sampling == sampling


@pytest.mark.parametrize("tensors, complaint", [
    ({**sequences(), "advantages": torch.zeros(2, 4, dtype=torch.int64)}, r"tensors\['advantages'\]: expected a tensor of dtype"),
    ({**sequences(), "advantages": torch.zeros(2, 5)}, r"tensors\['advantages'\]: shape \[2, 5\] differs"),
    ({**sequences(), "advantages": torch.zeros(2, 4), "ref_logprobs": torch.zeros(2, 4, dtype=torch.complex64)}, "ref_logprobs"),
    (sequences(), r"missing tensor columns \['advantages'\]"),
    ({**sequences(), "response_ids": torch.zeros(2, 4), "advantages": torch.zeros(2, 4)}, r"tensors\['response_ids'\]: expected a tensor of dtype uint8"),
])
def test_a_train_batch_that_a_trainer_could_not_use_is_refused(tensors, complaint):
    wire = {"batch": Batch(tensors).__wire__(), "step": 1, "temperature": 1.0, "kl_coef": 0.0}
    with pytest.raises(ProtocolError, match=complaint):
        from_payload(Train.KIND, wire)


def test_prompts_to_sample_must_be_lists_of_token_ids():
    wire = {"batch": Batch(columns={"prompt_ids": [[1, 2], ["x"]]}).__wire__(), "sampling": {}}
    with pytest.raises(ProtocolError, match=r"rl.generate.batch.columns\['prompt_ids'\]\[1\]\[0\]: expected int"):
        from_payload(Generate.KIND, wire)


def test_log_probs_and_values_must_be_floats():
    with pytest.raises(ProtocolError, match="rl.values.result.values"):
        from_payload(Values.KIND, {"values": torch.zeros(2, 3, dtype=torch.int32)})
    with pytest.raises(ProtocolError, match="missing tensor columns"):
        from_payload(ComputeLogProbs.KIND, {"batch": Batch({"prompt_ids": torch.zeros(1, 2, dtype=torch.int64)}).__wire__(), "temperature": 1.0})


def test_a_pipeline_item_must_be_a_float_matrix():
    with pytest.raises(ProtocolError, match="pipeline.item.values: expected a tensor of dtype"):
        from_payload(Item.KIND, {"index": 0, "values": torch.zeros(2, 2, dtype=torch.complex64)})
