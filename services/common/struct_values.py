"""google.protobuf.Value <-> plain JSON data, without json_format's per-field Python walk.

``json_format.ParseDict`` and ``MessageToDict`` cost ~50 us for a small state value; these use
the C-implemented ``Struct.update`` / ``ListValue.extend`` and one pass over the value.
"""

from __future__ import annotations

import math
from typing import Any

from google.protobuf import struct_pb2

# protobuf reads a message nested at most 100 levels deep, and a session reply nests a state value
# 4 deep (response, conversation, map entry, the Value): the levels left for its JSON lists (2
# each: ListValue, Value) and objects (3 each: Struct, map entry, Value): 48 lists or 32 objects.
MAX_VALUE_LEVELS = 96


class TooDeep(ValueError):
    """A value nested deeper than :data:`MAX_VALUE_LEVELS`."""


def value_to_python(value: struct_pb2.Value, room: int = MAX_VALUE_LEVELS) -> Any:
    """A protobuf Value as plain JSON data; ValueError when it is not valid JSON, TooDeep when
    its lists and objects take more than ``room`` levels of a message."""
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        if not math.isfinite(value.number_value):
            raise ValueError("numbers must be finite")
        return value.number_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "null_value":
        return None
    if kind == "struct_value":
        if room < 3:
            raise TooDeep(_TOO_DEEP)
        fields = value.struct_value.fields  # by key: a protobuf map's items() iterate in Python
        return {k: value_to_python(fields[k], room - 3) for k in fields}
    if kind == "list_value":
        if room < 2:
            raise TooDeep(_TOO_DEEP)
        return [value_to_python(v, room - 2) for v in value.list_value.values]
    raise ValueError("a value must have one of its kinds set")


_TOO_DEEP = (
    "nested deeper than a reply can carry (protobuf reads 100 levels: a JSON list takes 2, an "
    "object 3; at most 48 lists or 32 objects deep)"
)


def python_to_value(data: Any, out: struct_pb2.Value) -> None:
    if data is None:
        out.null_value = struct_pb2.NULL_VALUE
    elif isinstance(data, bool):
        out.bool_value = data
    elif isinstance(data, int | float):
        out.number_value = data
    elif isinstance(data, str):
        out.string_value = data
    elif isinstance(data, dict):
        out.struct_value.update(data)
    else:
        out.list_value.extend(data)
