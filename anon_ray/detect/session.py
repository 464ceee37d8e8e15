"""ONNX Runtime sessions configured the same way for every detector."""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import onnxruntime as ort

from anon_ray.config import SessionConfig

CPU = "CPUExecutionProvider"


def providers(cfg: SessionConfig) -> list[str]:
    """The configured providers that this onnxruntime build has, in order, with CPU always last."""
    available = set(ort.get_available_providers())
    return [p for p in cfg.providers if p in available and p != CPU] + [CPU]


def make_session(path: str, cfg: SessionConfig) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = cfg.intra_op_threads
    options.inter_op_num_threads = cfg.inter_op_threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # ORT warns about harmless things (unused initializers) on every load
    options.add_session_config_entry("session.x64quantprecision", "1" if int8_saturates() else "0")
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if cfg.spin else "0")
    return ort.InferenceSession(path, sess_options=options, providers=providers(cfg))


def int8_saturates(cpuinfo: str | None = None) -> bool:
    """Whether ORT's u8 x s8 int8 kernels saturate on this CPU, so sessions need its precision mode.

    x86 CPUs with AVX2 but no VNNI (many AMD EPYC before Zen 4, older Xeons) sum pairs of products
    in 16 bits: the INT8 face model then lost 17 of 184 hamilton faces the float model finds (9%);
    precision mode (u8 x u8 kernels) loses 1. With AVX-512 VNNI or AVX-VNNI the sums are 32-bit and
    precision mode only costs: the INT8 face model took 82 against 43 ms a 1280x736 frame (Xeon, 2
    cores) for identical outputs. An x86 CPU whose flags cannot be read gets the precise path.
    """
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return False  # the setting is x86-only
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return True
    flags = next((line.partition(":")[2].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return not {"avx512_vnni", "avx_vnni"} & set(flags)


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
