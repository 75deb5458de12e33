"""google.protobuf.Value <-> plain JSON data, without json_format's per-field Python walk.

``json_format.ParseDict`` and ``MessageToDict`` cost ~50 us for a small state value; these use
the C-implemented ``Struct.update`` / ``ListValue.extend`` and one pass over the value.
"""

from __future__ import annotations

import math
from typing import Any

from google.protobuf import struct_pb2


def value_to_python(value: struct_pb2.Value) -> Any:
    """A protobuf Value as plain JSON data; ValueError when it is not valid JSON."""
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
        fields = value.struct_value.fields  # by key: a protobuf map's items() iterate in Python
        return {k: value_to_python(fields[k]) for k in fields}
    if kind == "list_value":
        return [value_to_python(v) for v in value.list_value.values]
    raise ValueError("a value must have one of its kinds set")


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
