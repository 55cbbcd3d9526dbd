"""Typed messages: registration, the round trip through the wire, and decode errors that
name the full path of the field that is wrong."""

from __future__ import annotations

import dataclasses
import re
import sys
import types
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Optional, Union

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from protocols import control, membership
from protocols.batch import Batch
from protocols.envelope import decode_envelope, encode_envelope
from protocols.errors import ProtocolError
from protocols.messages import from_payload, kind_of, message, message_type, registered_kinds, to_payload
from tests.unit.protocols.payloads import make_envelope


@message("test_protocols.record")
class Record:  # test -> test
    name: str
    score: float = 0.0


@message("test_protocols.everything")
class Everything:  # test -> test: one field per supported annotation
    count: int
    ratio: float
    label: str
    blob: bytes
    flag: bool
    nothing: None
    maybe: Optional[int]
    either: Union[int, str]
    mode: Literal["train", "eval"]
    records: list[Record]
    sizes: tuple[int, ...]
    pair: tuple[str, int]
    table: dict[str, float]
    weights: torch.Tensor
    array: np.ndarray
    batch: Batch
    inner: Record
    anything: Any
    new_style: int | None = None
    plain_list: list = dataclasses.field(default_factory=list)


@message("test_protocols.tree")
class Tree:  # test -> test: refers to itself
    label: str
    children: list[Tree] = dataclasses.field(default_factory=list)


@message("test_protocols.positive")
class Positive:  # test -> test: validates itself
    value: int

    def __post_init__(self) -> None:
        if self.value <= 0:
            raise ValueError(f"value must be positive, got {self.value}")


@message("test_protocols.derived")
class Derived:  # test -> test: a field computed from the others
    values: list[int]
    total: int = dataclasses.field(init=False, default=0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "total", sum(self.values))


def make_everything(**changes: Any) -> Everything:
    fields = dict(
        count=-3, ratio=0.25, label="héllo", blob=b"\x00\xff", flag=True, nothing=None, maybe=None, either="x",
        mode="eval", records=[Record("a", 1.5), Record("b")], sizes=(1, 2, 3), pair=("k", 9),
        table={"lr": 1e-5, "beta": 0.1}, weights=torch.randn(2, 3, generator=torch.Generator().manual_seed(0)),
        array=np.arange(4, dtype=np.int16),
        batch=Batch({"ids": torch.arange(6).reshape(3, 2)}, {"text": ["x", "y", "z"]}),
        inner=Record("inner", -2.0), anything={"free": [1, "form"]}, new_style=7, plain_list=[1, "two"],
    )
    fields.update(changes)
    return Everything(**fields)


def through_the_wire(msg: Any) -> Any:
    """to_payload -> encode_envelope -> bytes frames -> decode_envelope -> from_payload."""
    frames, _ = encode_envelope(make_envelope(to_payload(msg), kind=kind_of(msg)))
    envelope = decode_envelope([bytes(frame) for frame in frames])
    return from_payload(envelope.kind, envelope.payload)


def wire_payload(msg: Any) -> dict[str, Any]:
    """The payload of `msg` as a receiver decodes it, ready to be tampered with."""
    frames, _ = encode_envelope(make_envelope(to_payload(msg)))
    return decode_envelope([bytes(frame) for frame in frames]).payload


# ----------------------------------------------------------------- round trip
def test_a_message_with_every_kind_of_field_round_trips():
    sent = make_everything()

    received = through_the_wire(sent)

    assert type(received) is Everything
    assert_close(received.weights, sent.weights, rtol=0, atol=0)
    assert received.array.dtype == np.int16 and received.array.tolist() == [0, 1, 2, 3]
    assert_close(received.batch["ids"], sent.batch["ids"], rtol=0, atol=0)
    assert received.batch["text"] == ["x", "y", "z"]
    plain = {"weights": None, "array": None, "batch": None}
    assert dataclasses.replace(received, **plain) == dataclasses.replace(sent, **plain)


def test_decoded_containers_take_the_annotated_python_types():
    received = through_the_wire(make_everything())
    assert type(received.sizes) is tuple and received.sizes == (1, 2, 3)
    assert type(received.pair) is tuple and received.pair == ("k", 9)
    assert type(received.records) is list and all(type(record) is Record for record in received.records)
    assert type(received.inner) is Record


def test_union_members_and_optionals_round_trip():
    for either, maybe in ((5, 0), ("five", 12), (-1, None)):
        received = through_the_wire(make_everything(either=either, maybe=maybe))
        assert (received.either, received.maybe) == (either, maybe)
        assert type(received.either) is type(either)


def test_an_int_is_accepted_where_a_float_is_expected_and_becomes_a_float():
    received = through_the_wire(make_everything(ratio=3, table={"a": 2}))
    assert received.ratio == 3.0 and type(received.ratio) is float
    assert type(received.table["a"]) is float


def test_a_message_under_an_any_field_arrives_as_its_field_map():
    # Any means "no type to rebuild": a nested message comes back as the map of its fields.
    received = through_the_wire(make_everything(anything=Record("n", 1.0)))
    assert received.anything == {"name": "n", "score": 1.0}


def test_a_self_referencing_message_round_trips():
    tree = Tree("root", [Tree("a"), Tree("b", [Tree("c")])])
    assert through_the_wire(tree) == tree


def test_optional_fields_may_be_left_out_of_the_payload():
    assert from_payload("test_protocols.record", {"name": "only"}) == Record("only", 0.0)


def test_to_payload_gives_the_fields_with_nested_values_unchanged():
    record = Record("a", 1.0)
    payload = to_payload(membership.Register(record=membership.ActorRecord(
        name="n", role="r", instance=0, endpoint="tcp://h:1", pid=2, host="h")))
    assert list(payload) == ["record"] and type(payload["record"]) is membership.ActorRecord
    assert to_payload(record) == {"name": "a", "score": 1.0}


# ----------------------------------------------------------------- decode errors
@pytest.mark.parametrize(
    ("path", "value", "where", "expected"),
    [
        (("count",), True, "test_protocols.everything.count", "int"),
        (("count",), 1.0, "test_protocols.everything.count", "int"),
        (("count",), "3", "test_protocols.everything.count", "int"),
        (("ratio",), True, "test_protocols.everything.ratio", "float"),
        (("ratio",), "0.5", "test_protocols.everything.ratio", "float"),
        (("label",), b"bytes", "test_protocols.everything.label", "str"),
        (("blob",), "text", "test_protocols.everything.blob", "bytes"),
        (("flag",), 1, "test_protocols.everything.flag", "bool"),
        (("nothing",), 0, "test_protocols.everything.nothing", "nil"),
        (("maybe",), "x", "test_protocols.everything.maybe", "int | NoneType"),
        (("either",), 1.5, "test_protocols.everything.either", "int | str"),
        (("either",), True, "test_protocols.everything.either", "int | str"),
        (("mode",), "test", "test_protocols.everything.mode", "one of"),
        (("records", 1, "name"), 5, "test_protocols.everything.records[1].name", "str"),
        (("records", 0, "score"), None, "test_protocols.everything.records[0].score", "float"),
        (("records",), {"a": 1}, "test_protocols.everything.records", "a list"),
        (("records", 0), "no", "test_protocols.everything.records[0]", "a map of Record fields"),
        (("sizes", 2), "3", "test_protocols.everything.sizes[2]", "int"),
        (("pair",), ["k"], "test_protocols.everything.pair", "a list of 2 items"),
        (("pair", 1), "9", "test_protocols.everything.pair[1]", "int"),
        (("table", "lr"), "fast", "test_protocols.everything.table['lr']", "float"),
        (("table",), [1], "test_protocols.everything.table", "a map"),
        (("weights",), [1.0, 2.0], "test_protocols.everything.weights", "torch.Tensor"),
        (("weights",), np.zeros(2), "test_protocols.everything.weights", "torch.Tensor"),
        (("array",), torch.zeros(2), "test_protocols.everything.array", "numpy.ndarray"),
        (("inner", "name"), None, "test_protocols.everything.inner.name", "str"),
        (("new_style",), "7", "test_protocols.everything.new_style", "int | NoneType"),
        (("plain_list",), "abc", "test_protocols.everything.plain_list", "a list"),
    ],
)
def test_a_wrong_field_value_is_refused_naming_its_full_path(path, value, where, expected):
    payload = wire_payload(make_everything())
    container = payload
    for step in path[:-1]:
        container = container[step]
    container[path[-1]] = value

    with pytest.raises(ProtocolError) as caught:
        from_payload("test_protocols.everything", payload)

    parsed = re.match(r"field (\S+): expected (.*), got", str(caught.value))
    assert parsed is not None, str(caught.value)
    field, wanted = parsed.groups()
    assert field == where
    assert expected in wanted


def test_a_dict_key_of_the_wrong_type_is_named():
    payload = wire_payload(make_everything())
    payload["table"] = {1: 0.5}
    with pytest.raises(ProtocolError, match=r"field test_protocols.everything.table key: expected str, got int 1"):
        from_payload("test_protocols.everything", payload)


def test_a_malformed_batch_field_is_named():
    payload = wire_payload(make_everything())
    payload["batch"]["size"] = 99
    with pytest.raises(ProtocolError, match=r"field test_protocols.everything.batch: size=99 was given"):
        from_payload("test_protocols.everything", payload)


def test_literal_checks_the_type_as_well_as_the_value():
    @message("test_protocols.literal_number")
    class Level:  # test -> test
        level: Literal[1, 2]

    assert from_payload("test_protocols.literal_number", {"level": 2}) == Level(2)
    for wrong in (True, 1.0, "1", 3):
        with pytest.raises(ProtocolError, match="field test_protocols.literal_number.level: expected one of"):
            from_payload("test_protocols.literal_number", {"level": wrong})


@pytest.mark.parametrize("value", [[1], {"a": 1}], ids=["list", "map"])
def test_an_unhashable_value_for_a_literal_field_is_refused_with_a_protocol_error(value):
    payload = wire_payload(make_everything())
    payload["mode"] = value
    with pytest.raises(ProtocolError, match="test_protocols.everything.mode"):
        from_payload("test_protocols.everything", payload)


def test_missing_fields_are_named():
    payload = wire_payload(make_everything())
    del payload["count"], payload["label"]
    expected = r"test_protocols.everything: missing fields \['count', 'label'\] for Everything"
    with pytest.raises(ProtocolError, match=expected):
        from_payload("test_protocols.everything", payload)


def test_unknown_fields_are_named():
    payload = wire_payload(make_everything())
    payload["surprise"] = 1
    payload[7] = 2
    expected = r"test_protocols.everything: unknown fields \['7', 'surprise'\] for Everything"
    with pytest.raises(ProtocolError, match=expected):
        from_payload("test_protocols.everything", payload)


@pytest.mark.parametrize("payload", [None, [1], "x", 3], ids=repr)
def test_a_payload_that_is_not_a_map_is_refused(payload):
    with pytest.raises(ProtocolError, match="field test_protocols.record: expected a map of Record fields"):
        from_payload("test_protocols.record", payload)


def test_an_unknown_kind_is_refused():
    with pytest.raises(ProtocolError, match="unknown message kind 'test_protocols.never_registered'"):
        from_payload("test_protocols.never_registered", {})
    with pytest.raises(ProtocolError, match="unknown message kind"):
        message_type("test_protocols.never_registered")


def test_a_check_in_the_message_itself_becomes_a_protocol_error():
    assert from_payload("test_protocols.positive", {"value": 2}) == Positive(2)
    expected = r"test_protocols.positive: invalid Positive: value must be positive, got -1"
    with pytest.raises(ProtocolError, match=expected):
        from_payload("test_protocols.positive", {"value": -1})


def test_a_message_with_a_computed_field_round_trips():
    assert through_the_wire(Derived([1, 2, 3])) == Derived([1, 2, 3])


# ----------------------------------------------------------------- registration
def test_messages_are_frozen_and_registered_under_their_kind():
    assert kind_of(Record("a")) == "test_protocols.record" == Record.KIND
    assert message_type("test_protocols.record") is Record
    assert {"test_protocols.record", "test_protocols.everything", "troupe.failure"} <= set(registered_kinds())
    with pytest.raises(dataclasses.FrozenInstanceError):
        Record("a").name = "b"  # type: ignore[misc]


def test_kind_of_refuses_an_unregistered_class():
    @dataclasses.dataclass(frozen=True)
    class Loose:
        value: int

    with pytest.raises(ProtocolError, match="Loose is not a registered message type; decorate it with @message"):
        kind_of(Loose(1))
    with pytest.raises(ProtocolError, match="not a registered message type"):
        to_payload(Loose(1))
    with pytest.raises(ProtocolError, match="not a registered message type"):
        kind_of({"name": "a"})


def test_kind_of_refuses_a_subclass_of_a_message():
    class Special(Record):
        pass

    with pytest.raises(ProtocolError, match="Special is not a registered message type"):
        kind_of(Special("a"))


def test_registering_a_kind_again_for_another_class_is_refused():
    with pytest.raises(ValueError, match="message kind 'test_protocols.record' is already registered for tests.unit.protocols.test_messages.Record"):
        @message("test_protocols.record")
        class Impostor:
            name: str
    assert message_type("test_protocols.record") is Record


def test_registering_a_kind_again_for_a_same_named_class_of_another_module_is_refused(monkeypatch):
    def class_in_module(module_name: str) -> type:
        module = types.ModuleType(module_name)
        monkeypatch.setitem(sys.modules, module_name, module)
        exec("class Item:\n    value: int\n", module.__dict__)
        return module.Item

    first = message("test_protocols.collide")(class_in_module("test_protocols_module_a"))
    with pytest.raises(ValueError, match="already registered"):
        message("test_protocols.collide")(class_in_module("test_protocols_module_b"))
    assert kind_of(first(1)) == "test_protocols.collide"


@pytest.mark.parametrize("kind", ["", None, 3], ids=repr)
def test_a_kind_must_be_a_non_empty_string(kind):
    with pytest.raises(ValueError, match="non-empty string"):
        message(kind)


def test_a_mutable_dataclass_cannot_be_a_message():
    @dataclasses.dataclass
    class Mutable:
        value: int

    with pytest.raises(TypeError, match="Mutable must be a frozen dataclass"):
        message("test_protocols.mutable")(Mutable)


@pytest.mark.parametrize("annotation", ["set[int]", "frozenset[str]", "complex", "type", "dict[str, set[int]]"])
def test_a_field_without_a_wire_form_is_refused_when_the_class_is_defined(annotation):
    namespace: dict[str, Any] = {}
    exec(f"class Unsendable:\n    value: {annotation}\n", namespace)
    with pytest.raises(TypeError, match="message fields cannot be annotated .* it has no wire form"):
        message(f"test_protocols.unsendable.{annotation}")(namespace["Unsendable"])


def test_sequence_and_mapping_annotations_are_accepted():
    @message("test_protocols.abstract_containers")
    class Abstract:  # test -> test
        items: Sequence[int]
        table: Mapping[str, int]

    assert through_the_wire(Abstract([1, 2], {"a": 1})) == Abstract([1, 2], {"a": 1})


# ----------------------------------------------------------------- runtime messages
RUNTIME_MESSAGES = [
    control.Ok(),
    control.Failure(error_type="ValueError", message="bad", traceback="Traceback ..."),
    control.Failure(error_type="ActorDead", message="gone"),
    control.Credit(),
    control.Ping(),
    control.Pong(name="echo-0", role="echo", pid=1234),
    membership.ActorRecord(name="gen-0", role="generator", instance=0, endpoint="tcp://127.0.0.1:5555", pid=99,
                           host="node-1", state="starting", capabilities={"gpus": 1, "models": ["a"]},
                           weights_version=3, registered_at=1.5, last_heartbeat=2.5),
    membership.Register(record=membership.ActorRecord(name="n", role="r", instance=1, endpoint="e", pid=1, host="h")),
    membership.Registered(epoch=4, heartbeat_interval_s=1, heartbeat_timeout_s=5.0),
    membership.Deregister(name="n", endpoint="tcp://127.0.0.1:1"),
    membership.Heartbeat(name="n", endpoint="tcp://127.0.0.1:1", state="busy", weights_version=None),
    membership.HeartbeatAck(known=False),
    membership.Lookup(role="trainer"),
    membership.LookupResult(epoch=2, records=[
        membership.ActorRecord(name="a", role="r", instance=0, endpoint="e", pid=1, host="h"),
        membership.ActorRecord(name="b", role="r", instance=1, endpoint="f", pid=2, host="h"),
    ]),
    membership.Watch(watcher="w", endpoint="tcp://x:1"),
    membership.Unwatch(watcher="w"),
    membership.MembershipEvent(
        event="left", epoch=9, reason="heartbeat-timeout",
        record=membership.ActorRecord(name="a", role="r", instance=0, endpoint="e", pid=1, host="h"),
    ),
]


@pytest.mark.parametrize("sent", RUNTIME_MESSAGES, ids=lambda msg: type(msg).__name__)
def test_control_and_membership_messages_round_trip(sent):
    received = through_the_wire(sent)
    assert type(received) is type(sent)
    assert received == sent


def test_a_membership_event_refuses_an_unknown_event():
    payload = wire_payload(next(m for m in RUNTIME_MESSAGES if isinstance(m, membership.MembershipEvent)))
    payload["event"] = "exploded"
    with pytest.raises(ProtocolError, match="field registry.membership_event.event: expected one of"):
        from_payload("registry.membership_event", payload)


def test_a_lookup_result_names_the_bad_record():
    payload = wire_payload(next(m for m in RUNTIME_MESSAGES if isinstance(m, membership.LookupResult)))
    payload["records"][1]["pid"] = "two"
    with pytest.raises(ProtocolError, match=r"field registry.lookup_result.records\[1\].pid: expected int"):
        from_payload("registry.lookup_result", payload)


def test_the_runtime_kinds_are_registered():
    runtime_kinds = {"troupe.ok", "troupe.failure", "troupe.credit", "troupe.ping", "troupe.pong",
                     "registry.record", "registry.register", "registry.registered", "registry.deregister",
                     "registry.heartbeat", "registry.heartbeat_ack", "registry.lookup", "registry.lookup_result",
                     "registry.watch", "registry.unwatch", "registry.membership_event"}
    assert runtime_kinds <= set(registered_kinds())
