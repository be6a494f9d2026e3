"""What this CPU is, as far as fast paths care: its name, family and model, the flags that decide
them, and whether it computes bf16 in hardware. Every measured decision (engine/precision.py,
engine/compile_plan.py) is cached under `name()`, and every bench run names its machine by
`description()`.

The model name alone does not tell CPUs apart: a KVM guest on a Zen 3 and one on a Zen 5 both say
"AMD EPYC", with different flags and speeds (bf16 emulated on one, native on the other), so the
family and model numbers are part of the name. ENGINE_CPU_BF16=0/1 overrides the native-bf16
detection (tests use it to take either branch on any machine).
"""

import os
import platform

import torch

from engine.errors import EngineError

FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")  # what decides fast paths


def has_native_bf16():
    """True where the CPU computes bf16 in hardware (AVX512-BF16 or AMX), so bf16 autocast pays.

    ENGINE_CPU_BF16=1 or 0, read on every call, overrides the detection."""
    override = os.environ.get("ENGINE_CPU_BF16")
    if override is not None:
        if override not in ("0", "1"):
            raise EngineError(f"ENGINE_CPU_BF16={override!r}: set it to 1 (native bf16), 0 (none), or unset it")
        return override == "1"
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def _cpuinfo(path="/proc/cpuinfo"):
    """The first processor's fields of /proc/cpuinfo as a dict ({} where it cannot be read)."""
    fields = {}
    try:
        with open(path) as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's block ends at its blank line
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def description(path="/proc/cpuinfo"):
    """(name, [its flags among FLAGS]): 'AMD EPYC (family 26, model 2)' from /proc/cpuinfo, the
    platform's name where it is missing."""
    info = _cpuinfo(path)
    name = info.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in info and "model" in info:
        name = f"{name} (family {info['cpu family']}, model {info['model']})"
    flags = set(info.get("flags", "").split())
    return name, [f for f in FLAGS if f in flags]


def name():
    """'AMD EPYC (family 26, model 2) avx2 fma avx512f ...': description() as one string."""
    model, flags = description()
    return " ".join([model, *flags])
