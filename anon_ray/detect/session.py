"""ONNX Runtime sessions configured the same way for every detector."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from anon_ray.config import SessionConfig
from anon_ray.models.cpu import int8_saturates
from anon_ray.models.onnx_int8 import max_abs_int8_weight

CPU = "CPUExecutionProvider"


def providers(cfg: SessionConfig) -> list[str]:
    """The configured providers that this onnxruntime build has, in order, with CPU always last."""
    available = set(ort.get_available_providers())
    return [p for p in cfg.providers if p in available and p != CPU] + [CPU]


def int8_sums_may_saturate(path: str) -> bool:
    """Whether a pair of u8 x s8 products of this model's int8 weights can overflow a 16-bit sum
    (|w| > 64 anywhere, or weights not read: models/onnx_int8.py), as it does on x86 CPUs without
    VNNI unless sessions run in precision mode."""
    with open(path, "rb") as f:
        largest = max_abs_int8_weight(f.read())
    return largest is None or largest > 64


def make_session(path: str, cfg: SessionConfig) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = cfg.intra_op_threads
    options.inter_op_num_threads = cfg.inter_op_threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # ORT warns about harmless things (unused initializers) on every load
    # Precision mode (u8 x u8 kernels) only where sums saturate and the weights can make them:
    # it takes the 8-bit INT8 face model from ~85 to ~110 ms a 1280x736 frame (2-core AMD EPYC).
    precise = int8_saturates() and int8_sums_may_saturate(path)
    options.add_session_config_entry("session.x64quantprecision", "1" if precise else "0")
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if cfg.spin else "0")
    return ort.InferenceSession(path, sess_options=options, providers=providers(cfg))


class DetectionError(RuntimeError):
    """Inference failed or produced non-finite numbers; the frames must not be treated as clean."""


def run_checked(session: ort.InferenceSession, names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run `session`, failing closed: an ORT error or a NaN/Inf anywhere is a DetectionError.

    A NaN heatmap compares False against every threshold, so it would silently read as "no faces".
    """
    try:
        outputs = session.run(names, feed)
    except Exception as e:  # ORT raises several unrelated types (Fail, InvalidArgument, RuntimeException, ...)
        raise DetectionError(f"inference failed: {e}") from e
    for name, out in zip(names, outputs):
        if not np.isfinite(out).all():
            raise DetectionError(f"inference output {name!r} contains NaN or Inf")
    return outputs
