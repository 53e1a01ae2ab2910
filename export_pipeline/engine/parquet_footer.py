"""Thrift compact protocol, generically: decode a parquet footer (or a page index) into a tree
keyed by field id, change a few fields, and encode it back.

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

import gc
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

# Compact protocol type ids.
BOOL_TRUE, BOOL_FALSE, BYTE, I16, I32, I64, DOUBLE, BINARY, LIST, SET, MAP, STRUCT = range(1, 13)

_DOUBLE = struct.Struct("<d")
_INTEGERS = frozenset((I16, I32, I64))  # all zigzag varints
_BOOLS = frozenset((BOOL_TRUE, BOOL_FALSE))
_SEQUENCES = frozenset((LIST, SET))
_BYTES = frozenset((BYTE, BOOL_TRUE))  # a bool inside a container is a byte


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


def decode_struct(buf: bytes | memoryview, pos: int = 0, shape: Shape = None) -> tuple[Struct, int]:
    """The struct encoded at `buf[pos:]` (decoded as deep as `shape` says) and the position
    just after it."""
    with paused_gc():
        try:
            return _decoder(bytes(buf))(STRUCT, pos, shape)
        except IndexError:
            raise ThriftError("truncated compact-protocol value") from None


def decode_structs(buf: bytes, starts: list[int], shape: Shape = None) -> list[tuple[Struct, int]]:
    """The structs encoded at each of `starts` in `buf`, each with the position after it."""
    with paused_gc():
        read = _decoder(buf)
        try:
            return [read(STRUCT, pos, shape) for pos in starts]
        except IndexError:
            raise ThriftError("truncated compact-protocol value") from None


@contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic garbage collection inside: a footer tree is millions of small containers,
    none of them cyclic, that a collection would only walk again and again."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def encode_struct(value: Struct) -> bytes:
    """The compact-protocol bytes of a struct."""
    out = bytearray()
    _write_struct(out, value)
    return bytes(out)


def _decoder(buf: bytes) -> Callable[[int, int, Shape], tuple[Any, int]]:
    """A reader of values in `buf`: (type, position, shape) -> (value, position after it)."""
    size_of_buf = len(buf)
    unpack_double = _DOUBLE.unpack_from

    def varint(pos: int) -> tuple[int, int]:
        result, shift = 0, 0
        while True:
            byte = buf[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                return result, pos
            shift += 7
            if shift > 70:
                raise ThriftError("varint too long")

    def skip(kind: int, pos: int) -> int:
        """The position after the value of type `kind` at `pos`, read no further."""
        if kind == STRUCT:
            while True:
                header = buf[pos]
                pos += 1
                if header == 0:
                    return pos
                if not header >> 4:  # a long field id: skip its varint
                    while buf[pos] & 0x80:
                        pos += 1
                    pos += 1
                kind_of_field = header & 0x0F
                if kind_of_field in _INTEGERS:
                    while buf[pos] & 0x80:
                        pos += 1
                    pos += 1
                elif kind_of_field == BINARY:
                    size, pos = varint(pos)
                    pos += size
                elif kind_of_field not in _BOOLS:
                    pos = skip(kind_of_field, pos)
        if kind in _INTEGERS:
            while buf[pos] & 0x80:
                pos += 1
            return pos + 1
        if kind == BINARY:
            size, pos = varint(pos)
            return pos + size
        if kind in _SEQUENCES:
            header = buf[pos]
            pos += 1
            kind_of_items, size = header & 0x0F, header >> 4
            if size == 15:
                size, pos = varint(pos)
            if kind_of_items in _BOOLS or kind_of_items == BYTE:
                return pos + size
            for _ in range(size):
                pos = skip(kind_of_items, pos)
            return pos
        if kind in _BYTES:
            return pos + 1
        if kind == DOUBLE:
            return pos + 8
        if kind == MAP:
            size, pos = varint(pos)
            if size == 0:
                return pos
            header = buf[pos]
            pos += 1
            key_type, value_type = header >> 4, header & 0x0F
            for _ in range(size):
                pos = skip(BOOL_TRUE if key_type in _BOOLS else key_type, pos)
                pos = skip(BOOL_TRUE if value_type in _BOOLS else value_type, pos)
            return pos
        raise ThriftError(f"unknown compact type {kind}")

    def struct_at(pos: int, shape: Shape) -> tuple[Struct, int]:
        fields, last = Struct(), 0
        while True:
            header = buf[pos]
            pos += 1
            if header == 0:
                return fields, pos
            kind = header & 0x0F
            if header >> 4:
                last += header >> 4
            else:
                raw, pos = varint(pos)
                last = (raw >> 1) ^ -(raw & 1)
            if kind in _INTEGERS:
                raw = buf[pos]
                if raw < 0x80:
                    pos += 1
                else:
                    raw, pos = varint(pos)
                fields[last] = (kind, (raw >> 1) ^ -(raw & 1))
            elif kind == BINARY:
                size = buf[pos]
                if size < 0x80:
                    pos += 1
                else:
                    size, pos = varint(pos)
                end = pos + size
                if end > size_of_buf:
                    raise ThriftError("truncated binary")
                fields[last] = (BINARY, buf[pos:end])
                pos = end
            elif kind in _BOOLS:
                fields[last] = (BOOL_TRUE, kind == BOOL_TRUE)
            elif shape is None:
                value, pos = read(kind, pos, None)
                fields[last] = (kind, value)
            elif last in shape:
                value, pos = read(kind, pos, shape[last])
                fields[last] = (kind, value)
            else:
                end = skip(kind, pos)
                if end > size_of_buf:
                    raise ThriftError("truncated compact-protocol value")
                fields[last] = (kind, Raw(buf[pos:end]))
                pos = end

    def read(kind: int, pos: int, shape: Shape) -> tuple[Any, int]:
        if kind == STRUCT:
            return struct_at(pos, shape)
        if kind in _INTEGERS:
            raw, pos = varint(pos)
            return (raw >> 1) ^ -(raw & 1), pos
        if kind == BINARY:
            size, pos = varint(pos)
            if pos + size > size_of_buf:
                raise ThriftError("truncated binary")
            return buf[pos : pos + size], pos + size
        if kind in _SEQUENCES:
            header = buf[pos]
            pos += 1
            kind_of_items, size = header & 0x0F, header >> 4
            if size == 15:
                size, pos = varint(pos)
            if kind_of_items == BOOL_FALSE:
                kind_of_items = BOOL_TRUE
            items: list[Any] = []
            append = items.append
            for _ in range(size):
                item, pos = read(kind_of_items, pos, shape)
                append(item)
            return Seq(kind_of_items, items, kind == SET), pos
        if kind == BYTE:
            byte = buf[pos]
            return (byte - 256 if byte > 127 else byte), pos + 1
        if kind == BOOL_TRUE:  # an element of a container: one byte, 1 true, 2 (or 0) false
            return buf[pos] == BOOL_TRUE, pos + 1
        if kind == DOUBLE:
            if pos + 8 > size_of_buf:
                raise ThriftError("truncated double")
            return unpack_double(buf, pos)[0], pos + 8
        if kind == MAP:
            size, pos = varint(pos)
            if size == 0:
                return Pairs(0, 0, []), pos
            header = buf[pos]
            pos += 1
            key_type, value_type = header >> 4, header & 0x0F
            key_type = BOOL_TRUE if key_type == BOOL_FALSE else key_type
            value_type = BOOL_TRUE if value_type == BOOL_FALSE else value_type
            pairs = []
            for _ in range(size):
                key, pos = read(key_type, pos, None)
                value, pos = read(value_type, pos, None)
                pairs.append((key, value))
            return Pairs(key_type, value_type, pairs), pos
        raise ThriftError(f"unknown compact type {kind}")

    return read


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
    if kind in _INTEGERS:
        out += _zigzag_bytes(value)
    elif kind == BINARY:
        _write_varint(out, len(value))
        out += value
    elif kind == STRUCT:
        _write_struct(out, value)
    elif kind in _SEQUENCES:
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
        out += _DOUBLE.pack(value)
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
