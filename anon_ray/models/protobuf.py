"""The protobuf wire format, read field by field with the standard library: TensorFlow graphs
(tf_graph.py) and ONNX models (onnx_int8.py) are read without their packages."""

from __future__ import annotations

from collections.abc import Iterator

from anon_ray.models.registry import ModelError

VARINT, FIXED64, BYTES, FIXED32 = 0, 1, 2, 5


def varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ModelError("truncated or overlong varint in the message")
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of one message: an int for varints, bytes otherwise."""
    i = 0
    while i < len(buf):
        key, i = varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == VARINT:
            value, i = varint(buf, i)
        elif wire in (FIXED64, FIXED32, BYTES):
            if wire == BYTES:
                size, i = varint(buf, i)
            else:
                size = 8 if wire == FIXED64 else 4
            if i + size > len(buf):
                raise ModelError("truncated field in the message")
            value, i = buf[i:i + size], i + size
        else:
            raise ModelError(f"unsupported protobuf wire type {wire} in the message")
        yield number, wire, value


def grouped(buf: bytes) -> dict[int, list]:
    """The values of one message by field number, in order (a repeated field's several)."""
    out: dict[int, list] = {}
    for number, _, value in fields(buf):
        out.setdefault(number, []).append(value)
    return out


def packed_varints(values: list) -> list[int]:
    """The signed values of a repeated integer field, as `fields` gave it: varints, or packed bytes."""
    out: list[int] = []
    for v in values:
        if isinstance(v, int):
            out.append(signed(v))
        else:  # packed
            i = 0
            while i < len(v):
                n, i = varint(v, i)
                out.append(signed(n))
    return out
