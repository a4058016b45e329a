"""The CPU this process runs on, as /proc/cpuinfo names it: every measured figure names its CPU
(these machines differ between sessions), and int8 kernels depend on its flags."""

from __future__ import annotations

import platform
from pathlib import Path


def _cpuinfo_field(name: str) -> str | None:
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.exists() else []:
        if line.startswith(name):
            return line.split(":", 1)[1].strip()
    return None


def cpu_name() -> str:
    """The CPU model, e.g. "AMD EPYC"."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """The kernel's flags for the first CPU (empty where there is no /proc/cpuinfo)."""
    return set((_cpuinfo_field("flags") or "").split())
