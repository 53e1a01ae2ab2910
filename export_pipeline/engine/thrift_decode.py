"""Decoding of the Thrift compact protocol into thrift.py's tree, as deep as a `Shape` asks."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from export_pipeline.engine.thrift import (
    BINARY,
    BOOL_FALSE,
    BOOL_TRUE,
    BOOLS,
    BYTE,
    BYTE_KINDS,
    DOUBLE,
    DOUBLE_FORMAT,
    INTEGERS,
    MAP,
    SEQUENCES,
    SET,
    STRUCT,
    Pairs,
    Raw,
    Seq,
    Shape,
    Struct,
    ThriftError,
)


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


def _decoder(buf: bytes) -> Callable[[int, int, Shape], tuple[Any, int]]:
    """A reader of values in `buf`: (type, position, shape) -> (value, position after it)."""
    size_of_buf = len(buf)
    unpack_double = DOUBLE_FORMAT.unpack_from

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
                if kind_of_field in INTEGERS:
                    while buf[pos] & 0x80:
                        pos += 1
                    pos += 1
                elif kind_of_field == BINARY:
                    size, pos = varint(pos)
                    pos += size
                elif kind_of_field not in BOOLS:
                    pos = skip(kind_of_field, pos)
        if kind in INTEGERS:
            while buf[pos] & 0x80:
                pos += 1
            return pos + 1
        if kind == BINARY:
            size, pos = varint(pos)
            return pos + size
        if kind in SEQUENCES:
            header = buf[pos]
            pos += 1
            kind_of_items, size = header & 0x0F, header >> 4
            if size == 15:
                size, pos = varint(pos)
            if kind_of_items in BOOLS or kind_of_items == BYTE:
                return pos + size
            for _ in range(size):
                pos = skip(kind_of_items, pos)
            return pos
        if kind in BYTE_KINDS:
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
                pos = skip(BOOL_TRUE if key_type in BOOLS else key_type, pos)
                pos = skip(BOOL_TRUE if value_type in BOOLS else value_type, pos)
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
            if kind in INTEGERS:
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
            elif kind in BOOLS:
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
        if kind in INTEGERS:
            raw, pos = varint(pos)
            return (raw >> 1) ^ -(raw & 1), pos
        if kind == BINARY:
            size, pos = varint(pos)
            if pos + size > size_of_buf:
                raise ThriftError("truncated binary")
            return buf[pos : pos + size], pos + size
        if kind in SEQUENCES:
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
