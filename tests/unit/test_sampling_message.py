"""Sampling settings cross the wire as a typed message (protocols.rl.Sampling), converted
from the user-facing `SamplingParams` at the sender and checked again at the generator."""

import dataclasses

import pytest
from pydantic import ValidationError

from protocols.batch import Batch
from protocols.messages import from_payload, to_payload
from protocols.rl import Generate, Sampling
from roles.rollout import sampling_message, sampling_params
from roles.sampling import SamplingParams
from tests.unit.protocols.payloads import round_trip


def test_the_message_carries_every_sampling_setting():
    assert [field.name for field in dataclasses.fields(Sampling)] == list(SamplingParams.model_fields)


def test_settings_arrive_at_the_generator_as_they_were_given():
    params = SamplingParams(n=4, temperature=0.7, top_p=0.9, top_k=20, max_new_tokens=16, stop=["\n\n", "</s>"],
                            seed=3, ignore_eos=True)

    sent = Generate(Batch(columns={"prompt_ids": [[1, 2]]}), sampling_message(params))
    received = from_payload(Generate.KIND, round_trip(to_payload(sent)))

    assert received.sampling == Sampling(4, 0.7, 0.9, 20, 16, ("\n\n", "</s>"), 3, True)
    assert sampling_params(received.sampling) == params


def test_the_generator_refuses_settings_the_user_facing_model_refuses():
    with pytest.raises(ValidationError, match="temperature"):
        sampling_params(Sampling(1, 0.0, 1.0, 0, 8, (), None, False))
