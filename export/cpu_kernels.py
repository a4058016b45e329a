"""Which int8 kernels onnxruntime runs on this CPU: the same int8 model can give different answers
on different kernel families, so an int8 model records where it was verified and a reader can tell
when it runs elsewhere (export/quantize.py).

onnxruntime's MLAS picks its integer GEMM by CPUID at start: AMX tiles, AVX-512 VNNI or AVX-VNNI
(`vpdpbusd`: u8 x s8 summed straight into 32 bits), plain AVX-512BW or AVX2 (`vpmaddubsw`: pairs
of u8 x s8 products summed into *16* bits with saturation, which large activations times large
8-bit weights overflow), and U8U8 kernels that widen to 16 bits first. The features are read
through numpy's own CPUID probe (numpy._core's `__cpu_features__`), so an emulated CPU
(`qemu-x86_64 -cpu Haswell`) reports what it emulates; /proc/cpuinfo would report the host's.
AMX and the VEX-encoded AVX-VNNI are not in numpy's list, so those two come from /proc/cpuinfo,
and only where /proc/cpuinfo describes the CPU this process runs on: its flags for the features
numpy also probes must agree with numpy's. Under emulation they do not (an Intel Xeon host with
AMX and AVX-VNNI running `qemu-x86_64 -cpu Haswell` lists both, while the emulated CPU, and so
onnxruntime, has neither).
"""

from __future__ import annotations

import platform

from metrix.machine import cpu_flags

#: Kernel families whose u8 x s8 products never saturate.
EXACT_U8S8 = ("amx", "avx512-vnni", "avx-vnni")
#: numpy's names for features /proc/cpuinfo also lists, and /proc/cpuinfo's.
BOTH_PROBE = {
    "F16C": "f16c",
    "FMA3": "fma",
    "AVX2": "avx2",
    "AVX512F": "avx512f",
    "AVX512BW": "avx512bw",
    "AVX512VNNI": "avx512_vnni",
}


def _numpy_features() -> dict[str, bool]:
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # numpy 1.x
        from numpy.core._multiarray_umath import __cpu_features__
    return __cpu_features__


def int8_kernels(features: dict[str, bool] | None = None, flags: set[str] | None = None) -> str:
    """The int8 kernel family of this CPU: amx, avx512-vnni, avx-vnni, avx512, avx2, or the
    machine's architecture (arm64, ...) elsewhere."""
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64"):
        return machine
    features = _numpy_features() if features is None else features
    flags = cpu_flags() if flags is None else flags
    if not features.get("AVX2"):
        return "sse"
    this_cpu = all(bool(features.get(name)) == (flag in flags) for name, flag in BOTH_PROBE.items())
    if this_cpu and features.get("AVX512_SPR") and "amx_int8" in flags:
        return "amx"
    if features.get("AVX512VNNI"):
        return "avx512-vnni"
    if this_cpu and "avx_vnni" in flags:
        return "avx-vnni"
    return "avx512" if features.get("AVX512BW") else "avx2"
