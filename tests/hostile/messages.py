"""Hypothesis strategies for any protobuf request, built from its descriptor: every field set or
not, with boundary and invalid values (empty and huge strings, unusual Unicode, negative and
extreme numbers, NaN and infinities, enum numbers no one defined, long repeated fields)."""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

F = FieldDescriptor
HUGE = 300_000  # characters: well past any field limit, well under gRPC's 4 MB message limit

_utf8 = st.characters(codec="utf-8")  # proto3 strings must be valid UTF-8 (no lone surrogates)
strings = st.one_of(
    st.sampled_from(
        [
            "",
            " ",
            "\x00",
            "a" * 257,
            "x" * HUGE,
            "🙂" * 2000,
            "\u202e\u200b\ufeff",
            "../../etc/passwd",
            "LHR",
            "lhr",
            "2026-02-30",
            "0000-01-01",
            "9999-12-31",
            "-1",
            "NaN",
            "*",
            "b1",
            "+15551234567",
            "whatsapp:+1",
        ]
    ),
    st.text(_utf8, max_size=40),
)
_INT_RANGES = {
    F.TYPE_INT32: (-(2**31), 2**31 - 1),
    F.TYPE_SINT32: (-(2**31), 2**31 - 1),
    F.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    F.TYPE_INT64: (-(2**63), 2**63 - 1),
    F.TYPE_SINT64: (-(2**63), 2**63 - 1),
    F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    F.TYPE_UINT32: (0, 2**32 - 1),
    F.TYPE_FIXED32: (0, 2**32 - 1),
    F.TYPE_UINT64: (0, 2**64 - 1),
    F.TYPE_FIXED64: (0, 2**64 - 1),
}


def _integers(low: int, high: int) -> st.SearchStrategy[int]:
    edges = [v for v in (low, low + 1, -1, 0, 1, 2, 1000, high - 1, high) if low <= v <= high]
    return st.sampled_from(edges) | st.integers(low, high)


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == F.TYPE_STRING:
        return strings
    if kind == F.TYPE_BYTES:
        return st.binary(max_size=64) | st.just(b"\xff" * HUGE)
    if kind == F.TYPE_BOOL:
        return st.booleans()
    if kind == F.TYPE_DOUBLE:
        return st.floats()  # NaN and the infinities included
    if kind == F.TYPE_FLOAT:
        return st.floats(width=32)
    if kind == F.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        # proto3 enums are open: any int32 is a valid wire value
        return st.sampled_from(known) | st.integers(-3, max(known) + 5) | st.just(2**31 - 1)
    low, high = _INT_RANGES[kind]
    return _integers(low, high)


def _small(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    if field.type == F.TYPE_STRING:
        return st.sampled_from(["", "a", "LHR", "🙂"])
    if field.type == F.TYPE_BYTES:
        return st.sampled_from([b"", b"\xff"])
    return _scalar(field)


def _is_map(field: FieldDescriptor) -> bool:
    message = field.message_type
    return message is not None and message.GetOptions().map_entry


def _value(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.type == F.TYPE_MESSAGE:
        return messages(field.message_type, depth + 1)
    return _scalar(field)


def _field(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if _is_map(field):
        key = _scalar(field.message_type.fields_by_name["key"])
        value = _value(field.message_type.fields_by_name["value"], depth)
        return st.dictionaries(key, value, max_size=3)
    if field.is_repeated:
        element = _value(field, depth)
        if field.type == F.TYPE_MESSAGE:
            return st.lists(element, max_size=3)
        # a few values, or a great many small ones (never many huge ones: memory)
        return st.lists(element, max_size=4) | _small(field).map(lambda v: [v] * 20_000)
    return _value(field, depth)


def messages(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    cls = GetMessageClass(descriptor)
    if depth > 2:
        return st.just(cls())
    optional = {f.name: _field(f, depth) for f in descriptor.fields}
    return st.fixed_dictionaries({}, optional=optional).map(lambda values: _build(cls, values))


def _build(cls: type[Message], values: dict[str, Any]) -> Message:
    message = cls()
    fields = message.DESCRIPTOR.fields_by_name
    for name, value in values.items():
        field = fields[name]
        target = getattr(message, name) if field.is_repeated else None
        if _is_map(field):
            message_values = field.message_type.fields_by_name["value"].type == F.TYPE_MESSAGE
            for key, item in value.items():
                if message_values:
                    target[key].CopyFrom(item)  # type: ignore[index]
                else:
                    target[key] = item  # type: ignore[index]
        elif field.is_repeated:
            if field.type == F.TYPE_MESSAGE:
                for item in value:
                    target.add().CopyFrom(item)  # type: ignore[union-attr]
            else:
                target.extend(value)  # type: ignore[union-attr]
        elif field.type == F.TYPE_MESSAGE:
            getattr(message, name).CopyFrom(value)
        else:
            setattr(message, name, value)
    return message


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


@st.composite
def wire_bytes(draw: st.DrawFn, depth: int = 0) -> bytes:
    """Well-formed protobuf wire data that is not what the method expects: known and unknown
    field numbers with any wire type, extreme varints, random or nested length-delimited
    payloads (a string field may get invalid UTF-8, which does not parse: INVALID_ARGUMENT)."""
    out = bytearray()
    for _ in range(draw(st.integers(1, 6))):
        number = draw(st.integers(1, 12) | st.sampled_from([15, 16, 2047, 2**29 - 1]))
        wire = draw(st.sampled_from([0, 1, 2, 5]))
        out += _varint(number << 3 | wire)
        if wire == 0:
            out += _varint(
                draw(st.sampled_from([0, 1, 2**31, 2**63, 2**64 - 1]) | st.integers(0, 2**64 - 1))
            )
        elif wire == 1:
            out += draw(st.binary(min_size=8, max_size=8))
        elif wire == 5:
            out += draw(st.binary(min_size=4, max_size=4))
        else:
            inner = (
                draw(wire_bytes(depth + 1))
                if depth < 2 and draw(st.booleans())
                else draw(st.binary(max_size=40))
            )
            out += _varint(len(inner)) + inner
    return bytes(out)
