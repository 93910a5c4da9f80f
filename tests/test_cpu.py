"""precision = "auto": int8 where the CPU has int8 dot products, read from /proc/cpuinfo's own format."""

import pytest

from ensemble_group.config import Config, ConfigError
from ensemble_group.cpu import SET_IN_CONFIG, choose_precision, cpu_flags, int8_instructions

AVX2_ONLY = """processor\t: 0
vendor_id\t: AuthenticAMD
flags\t\t: fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 bmi1 bmi2
processor\t: 1
flags\t\t: fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 bmi1 bmi2
"""
XEON_AMX = "flags\t\t: fpu avx2 avx512f avx512bw avx512_vnni avx_vnni avx512_bf16 amx_bf16 amx_tile amx_int8\n"
EPYC_VNNI = "flags\t\t: fpu avx2 avx512f avx512_vnni avx512_bf16\n"
ARM_DOTPROD = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes crc32 atomics fphp asimdhp asimdrdm asimddp\n"


def test_flags_are_read_from_x86_and_arm_cpuinfo():
    assert {"avx2", "fma", "bmi2"} <= cpu_flags(AVX2_ONLY) and "avx512f" not in cpu_flags(AVX2_ONLY)
    assert int8_instructions(AVX2_ONLY) == []
    assert int8_instructions(XEON_AMX) == ["avx512_vnni", "avx_vnni", "amx_int8"]
    assert int8_instructions(EPYC_VNNI) == ["avx512_vnni"]
    assert int8_instructions(ARM_DOTPROD) == ["asimddp"]
    assert int8_instructions("") == []


@pytest.mark.parametrize("cpuinfo, chosen", [(AVX2_ONLY, "float32"), (XEON_AMX, "int8"), (EPYC_VNNI, "int8"),
                                             (ARM_DOTPROD, "int8")])
def test_auto_runs_int8_only_with_int8_dot_products(cpuinfo, chosen):
    precision, why = choose_precision("auto", True, cpuinfo)
    assert precision == chosen and why.startswith("auto: ")
    assert ("avx512_vnni" in why) == ("avx512_vnni" in cpuinfo)
    # int8 runs only through TFLite; an explicit setting is kept whatever the CPU
    assert choose_precision("auto", False, cpuinfo) == ("float32", "auto: int8 needs lite = true")
    assert choose_precision("float32", True, cpuinfo) == ("float32", SET_IN_CONFIG)
    assert choose_precision("int8", True, cpuinfo) == ("int8", SET_IN_CONFIG)


def test_auto_is_the_default_and_takes_a_calibration_folder():
    assert Config().precision == "auto"
    assert Config(precision="auto", calibration="photos").calibration == "photos"  # used where auto picks int8
    assert Config(precision="auto", lite=False).lite is False  # auto on TensorFlow: float32, no error
    with pytest.raises(ConfigError, match='calibration is the int8 calibration folder: it needs precision = "int8" or "auto"'):
        Config(precision="float32", calibration="photos")


def test_cores_are_the_ones_this_process_may_run_on_not_the_machines():
    """Under `taskset -c 0` (or a container's cpuset) every pool is sized for one core, not for all."""
    import os
    import subprocess
    import sys

    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no CPU affinity on this system")
    from ensemble_group import cpu

    assert cpu.cores() == len(os.sched_getaffinity(0))
    one = sorted(os.sched_getaffinity(0))[0]
    code = (f"import os; os.sched_setaffinity(0, {{{one}}}); from ensemble_group import cpu; "
            "print(cpu.cores(), cpu.signature().split(' | ')[1])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["1", "1", "cores"]
