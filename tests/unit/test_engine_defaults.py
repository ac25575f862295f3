"""The embedded engine's arguments follow the device where the settings leave them unset."""

from __future__ import annotations

import pytest

from mrsa.engine.config import EngineConfig
from mrsa.engine.local import cpu_has_native_bf16, device_defaults

pytestmark = pytest.mark.vllm_api  # the engine's arguments: also checked on the CUDA flavour

# /proc/cpuinfo flag lines of the two kinds of machine this project runs on (abridged).
AMD_AVX2 = "flags\t\t: fpu vme sse sse2 avx avx2 fma bmi2 sha_ni vaes vpclmulqdq\n"
INTEL_AMX = "flags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512_bf16 amx_bf16 amx_tile amx_int8\n"


def test_bf16_instructions_are_read_from_cpuinfo() -> None:
    assert not cpu_has_native_bf16(AMD_AVX2)
    assert cpu_has_native_bf16(INTEL_AMX)
    assert not cpu_has_native_bf16("flags\t\t: avx512f avx512_bf16x\n")  # whole flags only


@pytest.mark.parametrize(("cpuinfo", "dtype"), [(AMD_AVX2, "float32"), (INTEL_AMX, "auto")])
def test_auto_dtype_is_float32_only_where_bf16_would_be_emulated(cpuinfo: str, dtype: str) -> None:
    args = device_defaults(EngineConfig(), cpu=True, native_bf16=cpu_has_native_bf16(cpuinfo))
    assert args["dtype"] == dtype  # "auto" left to vLLM picks bf16 there, the fast path


def test_cpu_and_gpu_defaults() -> None:
    cpu = device_defaults(EngineConfig(), cpu=True, native_bf16=False)
    gpu = device_defaults(EngineConfig(), cpu=False, native_bf16=False)
    assert (cpu["max_model_len"], cpu["gpu_memory_utilization"], cpu["enforce_eager"]) == (4096, 0.35, True)
    assert (gpu["max_model_len"], gpu["gpu_memory_utilization"], gpu["enforce_eager"]) == (None, 0.9, False)
    assert gpu["dtype"] == "auto"


def test_explicit_settings_win_on_either_device() -> None:
    config = EngineConfig(dtype="bfloat16", max_model_len=2048, gpu_memory_utilization=0.5, enforce_eager=False)
    for cpu in (True, False):
        args = device_defaults(config, cpu=cpu, native_bf16=False)
        assert args == {"dtype": "bfloat16", "max_model_len": 2048, "gpu_memory_utilization": 0.5, "enforce_eager": False}
