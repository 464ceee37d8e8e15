"""Whether this CPU's int8 sums saturate (read from its flags, without ONNX Runtime)."""

from __future__ import annotations

import platform
from pathlib import Path


def int8_saturates(cpuinfo: str | None = None) -> bool:
    """Whether ORT's u8 x s8 int8 kernels saturate on this CPU, so sessions need its precision mode.

    x86 CPUs with AVX2 but no VNNI (many AMD EPYC before Zen 4, older Xeons) sum pairs of products
    in 16 bits: the 8-bit INT8 face model then lost 17 of 184 hamilton faces the float model finds
    (9%); precision mode (u8 x u8 kernels) loses 1, and 7-bit weights cannot saturate (build.py).
    With AVX-512 VNNI or AVX-VNNI the sums are 32-bit and precision mode only costs: the 8-bit
    model took 82 against 43 ms a 1280x736 frame (Xeon, 2 cores) for identical outputs. An x86 CPU
    whose flags cannot be read gets the precise path.
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
