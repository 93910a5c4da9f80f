"""What this CPU can do fast, read at run time: `precision = "auto"` runs int8 where the CPU has int8
dot-product instructions and float32 elsewhere.

Full-integer members pay only with instructions that multiply and add int8 in one step: on an Intel
Xeon with AVX-512 VNNI and AMX-INT8 they ran 5-14x faster than float32, on an AMD EPYC with AVX-512
VNNI the whole offline run 2.5x faster; on an AVX2-only CPU they were slower (benchmarks/README.md).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

SET_IN_CONFIG = "set in the config"
# x86: AVX-512 VNNI, AVX-VNNI (the same with 256-bit vectors), AMX; Arm: SDOT/UDOT and the int8 matrix multiply
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")
# the flags that decide which kernels XNNPACK and oneDNN pick, so which engine runs a member faster
KERNEL_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_bf16", "amx_bf16", "asimd", "sve") + INT8_FLAGS


def cpu_flags(cpuinfo: str) -> set[str]:
    """The feature flags in a /proc/cpuinfo text ("flags" on x86, "Features" on Arm)."""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return flags


def cores() -> int:
    """The cores this process may run on: its CPU affinity (`taskset`, a container's cpuset), which can be
    fewer than the machine's; every thread pool of the engine is sized by it."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity on this system (macOS)
        return os.cpu_count() or 1


@lru_cache(maxsize=1)
def _read_cpuinfo() -> str:
    """/proc/cpuinfo once per process ("" where there is none): it is large on big machines and never changes."""
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""


def signature(cpuinfo: str | None = None) -> str:
    """This machine's CPU in one line: model name, core count and the vector flags kernels choose by.
    A speed measured on one machine (`race`) is only reused on a machine with the same signature."""
    text = _read_cpuinfo() if cpuinfo is None else cpuinfo
    model = next((line.partition(":")[2].strip() for line in text.splitlines()
                  if line.partition(":")[0].strip() in ("model name", "CPU part")), "unknown CPU")
    have = cpu_flags(text)
    return f"{model} | {cores()} cores | {' '.join(f for f in KERNEL_FLAGS if f in have)}"


def int8_instructions(cpuinfo: str | None = None) -> list[str]:
    """The int8 dot-product flags this CPU has (of `INT8_FLAGS`); [] where /proc/cpuinfo cannot be read."""
    have = cpu_flags(_read_cpuinfo() if cpuinfo is None else cpuinfo)
    return [f for f in INT8_FLAGS if f in have]


def choose_precision(precision: str, lite: bool, cpuinfo: str | None = None) -> tuple[str, str]:
    """(the precision members run at, why): "auto" becomes int8 where the CPU has int8 dot products."""
    if precision != "auto":
        return precision, SET_IN_CONFIG
    if not lite:
        return "float32", "auto: int8 needs lite = true"
    found = int8_instructions(cpuinfo)
    if found:
        return "int8", f"auto: this CPU has {', '.join(found)}"
    return "float32", "auto: no int8 dot products on this CPU"
