"""Quantization choices and the per-device presets that pick among them.

A preset names the encoder and LLM types for a device and how that device should run the
bundle: the runtime's `device` (encoder execution providers and LLM offload, see
edge_runtime/device.py), threads, and LLM layers on the GPU. Every field can be overridden
on the command line; the result is written to the manifest's `quantization.runtime` as
keyword arguments for MossAudio.
"""
from __future__ import annotations

import platform
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edge_runtime.device import ALL_LAYERS, DEVICES
from edge_runtime.errors import InputError

ENCODER_TYPES = ("fp32", "fp16", "int8", "int4")
LLM_TYPES = ("F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0")


@dataclass(frozen=True)
class Int8Layout:
    """How int8 weights are laid out for a family of CPUs: optimum's AutoQuantizationConfig
    preset for them, and whether weights keep to 7 bits."""
    optimum_preset: str  # the AutoQuantizationConfig constructor
    reduce_range: bool


# Every layout is dynamic quantization with u8 activations and s8 symmetric per-channel
# weights: arm64 and x86 VNNI/AMX use the full 8 bits; "avx2" keeps weights in 7 bits because
# AVX2 without VNNI multiplies u8 x s8 pairs into int16 that can saturate (optimum's own
# reduce_range advice). optimum's avx2 preset stores u8 weights, which ran slower than s8 even
# on AVX2: quantize/onnx_quant.py keeps s8 there (benchmarks/results/int8_recipe.md).
INT8_LAYOUTS = {"arm64": Int8Layout("arm64", reduce_range=False),
                "vnni": Int8Layout("avx512_vnni", reduce_range=False),
                "avx2": Int8Layout("avx2", reduce_range=True)}


def host_int8_layout() -> str:
    """The layout for the machine quantizing, when no target names one."""
    if platform.machine().lower() in ("arm64", "aarch64"):
        return "arm64"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "avx2"  # unknown x86: the layout that is safe everywhere
    return "vnni" if re.search(r"\b(avx512_vnni|avx_vnni)\b", flags) else "avx2"


@dataclass(frozen=True)
class Preset:
    description: str
    encoder: str
    llm: str
    int8_layout: str  # INT8_LAYOUTS key, when the encoder is int8
    device: str  # the runtime's device: encoder execution providers and LLM offload
    threads: int | None  # None: every core
    gpu_layers: int | None  # None: as the device decides

    def runtime(self) -> dict[str, Any]:
        return {"device": self.device, "threads": self.threads, "gpu_layers": self.gpu_layers}


PRESETS: dict[str, Preset] = {
    "pi5": Preset(
        "Raspberry Pi 5 (4x Cortex-A76, 8 GB): int8 encoder on the CPU (ARM64 dot-product "
        "kernels), Q4_K_M LLM (~2.5 GB for 4B), 4 threads",
        encoder="int8", llm="Q4_K_M", int8_layout="arm64", device="cpu", threads=4, gpu_layers=None),
    "jetson": Preset(
        "Jetson Orin (CUDA, shared memory): fp16 encoder on the CUDA execution provider, Q4_K_M "
        "LLM with every layer on the GPU (llama-cpp-python built with GGML_CUDA), 6 threads",
        encoder="fp16", llm="Q4_K_M", int8_layout="arm64", device="cuda", threads=6, gpu_layers=None),
    "apple": Preset(
        "Apple Silicon: int8 encoder on the CPU (CoreML takes no integer MatMul, so a CPU-only "
        "encoder avoids a split graph), Q4_K_M LLM with every layer on Metal",
        encoder="int8", llm="Q4_K_M", int8_layout="arm64", device="cpu", threads=None,
        gpu_layers=ALL_LAYERS),
    "x86": Preset(
        "x86-64 laptop or desktop: int8 encoder with 7-bit weights (no int16 saturation on "
        "AVX2 CPUs without VNNI), Q4_K_M LLM on the CPU, every core",
        encoder="int8", llm="Q4_K_M", int8_layout="avx2", device="cpu", threads=None, gpu_layers=None),
}


def resolve(target: str | None, **overrides: Any) -> Preset:
    """The target's preset with every override that is not None applied. Without a target:
    the runtime's automatic device, every core, and the int8 layout of this machine."""
    if target is not None and target not in PRESETS:
        raise InputError(f"unknown target {target!r}; choose one of {', '.join(PRESETS)}")
    preset = PRESETS[target] if target else Preset(
        "no target: the runtime's automatic device on a machine like this one", encoder="int8",
        llm="Q4_K_M", int8_layout=host_int8_layout(), device="auto", threads=None, gpu_layers=None)
    preset = replace(preset, **{k: v for k, v in overrides.items() if v is not None})
    for value, allowed, what in ((preset.encoder, ENCODER_TYPES, "encoder type"),
                                 (preset.llm, LLM_TYPES, "LLM type"),
                                 (preset.int8_layout, tuple(INT8_LAYOUTS), "int8 layout"),
                                 (preset.device, DEVICES, "device")):
        if value not in allowed:
            raise InputError(f"{what} {value!r} not one of {', '.join(allowed)}")
    return preset
