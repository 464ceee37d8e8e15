"""The INT8 weights of an ONNX model, read from its protobuf with the standard library and numpy.

Workers on x86 CPUs without VNNI ask this of every model they load (detect/session.py); the onnx
package would cost each ~0.9 s CPU to import (ml_dtypes) before its first frame. Read against
onnx.proto: ModelProto.graph (7), GraphProto.initializer (5), TensorProto.data_type (2),
int32_data (5), raw_data (9), data_location (14).
"""

from __future__ import annotations

import numpy as np

from anon_ray.models.protobuf import BYTES, fields, grouped, packed_varints

_GRAPH, _INITIALIZER = 7, 5
_DATA_TYPE, _INT32_DATA, _RAW_DATA, _DATA_LOCATION = 2, 5, 9, 14
_INT8 = 3  # TensorProto.DataType.INT8
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL


def max_abs_int8_weight(data: bytes) -> int | None:
    """The largest |value| among a serialized model's INT8 initializers (0 where it has none);
    None where one of them is stored outside the file (external data), whose values are not read
    here, so nothing can be promised about them."""
    largest = 0
    for number, wire, graph in fields(data):
        if number != _GRAPH or wire != BYTES:
            continue
        for number, wire, tensor in fields(graph):
            if number != _INITIALIZER or wire != BYTES:
                continue
            parts = grouped(tensor)
            if parts.get(_DATA_TYPE) != [_INT8]:
                continue
            if parts.get(_DATA_LOCATION) == [_EXTERNAL]:
                return None
            # Weights as raw bytes; small tensors (zero points) as int32_data. In int16, where
            # |-128| fits: the largest weights run to millions of values.
            values = [np.frombuffer(raw, np.int8).astype(np.int16) for raw in parts.get(_RAW_DATA, [])]
            values.append(np.array(packed_varints(parts.get(_INT32_DATA, [])), np.int16))
            largest = max(largest, int(np.abs(np.concatenate(values)).max(initial=0)))
    return largest
