"""Thrift compact protocol, generically: the tree a parquet footer (or a page index) decodes to
(thrift_decode.py), keyed by field id, and its encoding back to bytes.

Covers the whole protocol: structs (short and long field headers), lists, sets, maps, binary,
i8, i16/i32/i64 zigzag varints, bools (in field headers and as container bytes) and doubles.
A struct decodes to a `Struct` (field id -> (type, value), in wire order); lists and sets to
`Seq`, maps to `Pairs`; integers to int, binary to bytes, doubles to float, bools to bool. A
`Shape` may leave the fields nobody will look at encoded (`Raw`), which is most of the time and
memory saved on a large footer. Encoding writes what Apache Thrift's compact writer writes
(short field headers where the id delta fits, shortest varints), so a tree decoded from such a
writer (pyarrow's, DuckDB's, parquet-mr's) and left unchanged encodes to the very same bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

# Compact protocol type ids.
BOOL_TRUE, BOOL_FALSE, BYTE, I16, I32, I64, DOUBLE, BINARY, LIST, SET, MAP, STRUCT = range(1, 13)

DOUBLE_FORMAT = struct.Struct("<d")
INTEGERS = frozenset((I16, I32, I64))  # all zigzag varints
BOOLS = frozenset((BOOL_TRUE, BOOL_FALSE))
SEQUENCES = frozenset((LIST, SET))
BYTE_KINDS = frozenset((BYTE, BOOL_TRUE))  # a bool inside a container is a byte


# One field of a struct: its compact type id (BOOL_TRUE stands for both bools) and value.
Field = tuple[int, Any]


class Struct(dict[int, Field]):
    """A struct's fields by id, in the order they were read (or set)."""

    def get_value(self, fid: int, default: Any = None) -> Any:
        """The value of field `fid`, or `default` where it is absent."""
        field = self.get(fid)
        return default if field is None else field[1]

    def set_value(self, fid: int, type_: int, value: Any) -> None:
        """Set field `fid` (kept in place if present, else appended; encoding sorts nothing)."""
        self[fid] = (type_, value)


@dataclass
class Seq:
    """A list or set (`is_set`) of elements of one type."""

    type: int
    items: list[Any]
    is_set: bool = False


@dataclass
class Pairs:
    """A map, as its (key, value) pairs in wire order."""

    key_type: int
    value_type: int
    items: list[tuple[Any, Any]]


class ThriftError(ValueError):
    """The bytes are not a valid compact-protocol value."""


class Raw(bytes):
    """A field left encoded (see `Shape`): its bytes, written back as they are."""


# Which fields to decode: None, all of them; a dict, the struct's scalar fields and, of its
# structs, lists, sets and maps, only those it names (with the shape of that struct, or of the
# list's elements); the others stay `Raw`. A footer's statistics, encodings and paths are most
# of its bytes, and an assembly never looks inside them.
Shape = dict[int, "Shape"] | None


def encode_struct(value: Struct) -> bytes:
    """The compact-protocol bytes of a struct."""
    out = bytearray()
    _write_struct(out, value)
    return bytes(out)


def _write_varint(out: bytearray, value: int) -> None:
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _write_zigzag(out: bytearray, value: int) -> None:
    _write_varint(out, (value << 1) ^ (value >> 63) if value < 0 else value << 1)


def _write_struct(out: bytearray, fields: Struct) -> None:
    last = 0
    for fid, (kind, value) in fields.items():
        is_bool = kind == BOOL_TRUE
        if is_bool:
            kind = BOOL_TRUE if value else BOOL_FALSE
        delta = fid - last
        if 0 < delta <= 15:
            out.append(delta << 4 | kind)
        else:
            out.append(kind)
            _write_zigzag(out, fid)
        last = fid
        if type(value) is Raw:
            out += value
        elif not is_bool:
            _write_value(out, kind, value)
    out.append(0)


def _write_value(out: bytearray, kind: int, value: Any) -> None:
    if kind in INTEGERS:
        out += _zigzag_bytes(value)
    elif kind == BINARY:
        _write_varint(out, len(value))
        out += value
    elif kind == STRUCT:
        _write_struct(out, value)
    elif kind in SEQUENCES:
        size = len(value.items)
        if size < 15:
            out.append(size << 4 | value.type)
        else:
            out.append(0xF0 | value.type)
            _write_varint(out, size)
        for item in value.items:
            _write_value(out, value.type, item)
    elif kind == BYTE:
        out.append(value & 0xFF)
    elif kind == BOOL_TRUE:
        out.append(BOOL_TRUE if value else BOOL_FALSE)
    elif kind == DOUBLE:
        out += DOUBLE_FORMAT.pack(value)
    elif kind == MAP:
        _write_varint(out, len(value.items))
        if value.items:
            out.append(value.key_type << 4 | value.value_type)
            for key, item in value.items:
                _write_value(out, value.key_type, key)
                _write_value(out, value.value_type, item)
    else:
        raise ThriftError(f"unknown compact type {kind}")


def _zigzag_bytes(value: int) -> bytes:
    raw = (value << 1) ^ (value >> 63) if value < 0 else value << 1
    if raw < 0x80:
        return bytes((raw,))
    out = bytearray()
    _write_varint(out, raw)
    return bytes(out)
