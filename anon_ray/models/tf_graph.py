"""A TensorFlow frozen graph (GraphDef protobuf) read with the standard library and numpy: no TensorFlow.

Only what a converter needs: each node's name, op, inputs and attributes, with constant tensors as
numpy arrays. The protobuf wire format is read field by field against TensorFlow's schema
(graph.proto, node_def.proto, attr_value.proto, tensor.proto); fields of no use here are skipped.
Anything malformed raises ModelError, never a guess.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from anon_ray.models.protobuf import BYTES, fields, grouped, packed_varints, signed
from anon_ray.models.registry import ModelError

# tensorflow/core/framework/types.proto
DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 9: np.int64, 10: np.bool_}


@dataclass(frozen=True)
class TfNode:
    name: str
    op: str
    inputs: tuple[str, ...]  # "name" or "name:k" for output k; "^name" control inputs dropped
    attrs: dict = field(default_factory=dict)  # str, int, float, bool, list, or np.ndarray (tensors)


def _packed_floats(values: list) -> list[float]:
    return [f for v in values for f in struct.unpack(f"<{len(v) // 4}f", v)]


def tensor(buf: bytes) -> np.ndarray:
    """A TensorProto as a numpy array."""
    t = grouped(buf)
    code = t.get(1, [0])[0]
    if code not in DTYPES:
        raise ModelError(f"tensor of unsupported dtype {code} in the graph")
    dtype = np.dtype(DTYPES[code])
    shape = [signed(grouped(d).get(1, [0])[0]) for d in grouped(t[2][0]).get(2, [])] if 2 in t else []
    count = int(np.prod(shape)) if shape else 1
    if 4 in t:  # tensor_content: the raw little-endian bytes
        data = np.frombuffer(t[4][0], dtype.newbyteorder("<")).astype(dtype)
    elif 5 in t:
        data = np.array(_packed_floats(t[5]), dtype)
    elif 7 in t or 10 in t:
        data = np.array(packed_varints(t.get(7, []) + t.get(10, [])), dtype)
    else:
        data = np.zeros(0, dtype)
    if data.size == count:
        return data.reshape(shape)
    if data.size == 1:  # a scalar value fills the whole shape
        return np.full(shape, data[0], dtype)
    raise ModelError(f"tensor of shape {shape} holds {data.size} values")


def _attr(buf: bytes):
    a = grouped(buf)
    if 2 in a:
        return a[2][0].decode()
    if 3 in a:
        return signed(a[3][0])
    if 4 in a:
        return struct.unpack("<f", a[4][0])[0]
    if 5 in a:
        return bool(a[5][0])
    if 6 in a:
        return a[6][0]
    if 8 in a:  # a tensor of a dtype no converter reads (strings of Assert messages): None
        return tensor(a[8][0]) if grouped(a[8][0]).get(1, [0])[0] in DTYPES else None
    if 1 in a:  # a list: of ints (strides, dilations) here; others are kept raw
        items = grouped(a[1][0])
        if 3 in items:
            return packed_varints(items[3])
        if 4 in items:
            return _packed_floats(items[4])
        return [v.decode() for v in items.get(2, [])]
    return None


def read_graph(data: bytes) -> dict[str, TfNode]:
    """The nodes of a serialized GraphDef by name."""
    nodes: dict[str, TfNode] = {}
    for number, wire, value in fields(data):
        if number != 1 or wire != BYTES:
            continue
        n = grouped(value)
        try:
            attrs = {}
            for entry in n.get(5, []):
                kv = grouped(entry)
                attrs[kv[1][0].decode()] = _attr(kv[2][0]) if 2 in kv else None
            node = TfNode(n[1][0].decode(), n[2][0].decode(),
                          tuple(s.decode() for s in n.get(3, []) if not s.startswith(b"^")), attrs)
        except (KeyError, IndexError, ValueError, struct.error) as e:  # UnicodeDecodeError is a ValueError
            raise ModelError(f"malformed node in the graph ({type(e).__name__}: {e})") from e
        nodes[node.name] = node
    if not nodes:
        raise ModelError("no nodes: not a TensorFlow GraphDef")
    return nodes
