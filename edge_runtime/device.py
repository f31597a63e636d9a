"""`device=` -> onnxruntime execution providers for the encoder and llama.cpp GPU offload.

What is possible depends on how the two libraries were built (a CPU wheel of onnxruntime has
no CUDA provider; llama-cpp-python offloads only when compiled with CUDA or Metal), so a
device that is asked for but missing falls back to the CPU with one line on stderr, or
raises DeviceError when `strict`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import llama_cpp
import onnxruntime as ort

from .errors import InputError

log = logging.getLogger("moss_edge")

CPU = "CPUExecutionProvider"
ALL_LAYERS = 999  # llama.cpp clamps to the model's layer count

# The encoder's providers per device, best first; CPU is always appended as the last resort.
# "auto" leaves TensorRT out: its first run builds an engine for minutes.
PROVIDERS = {
    "auto": ("CUDAExecutionProvider", "CoreMLExecutionProvider"),
    "cpu": (),
    "cuda": ("CUDAExecutionProvider",),
    "tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider"),
    "metal": ("CoreMLExecutionProvider",),  # Apple: Metal for the LLM, CoreML for the encoder
}
ALIASES = {"coreml": "metal", "gpu": "auto"}
DEVICES = tuple(PROVIDERS) + tuple(ALIASES)

LLAMA_REBUILD = {"cuda": "-DGGML_CUDA=on", "tensorrt": "-DGGML_CUDA=on", "metal": "-DGGML_METAL=on"}


class DeviceError(InputError):
    """The requested device is unknown, or (strict) not available in this installation."""


@dataclass(frozen=True)
class DevicePlan:
    device: str
    providers: list[str]  # for onnxruntime, in order of preference
    gpu_layers: int  # for llama.cpp

    def describe(self) -> str:
        llm = f"GPU ({self.gpu_layers} layers offloaded)" if self.gpu_layers else "CPU"
        return f"encoder on {self.providers[0]}, LLM on {llm}"


def resolve_device(device: str = "auto", strict: bool = False,
                   available: Sequence[str] | None = None, gpu_offload: bool | None = None) -> DevicePlan:
    """`available` / `gpu_offload` default to what the installed libraries report."""
    name = ALIASES.get(device.lower(), device.lower())
    if name not in PROVIDERS:
        raise DeviceError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    available = ort.get_available_providers() if available is None else available
    gpu_offload = bool(llama_cpp.llama_supports_gpu_offload()) if gpu_offload is None else gpu_offload
    wanted = PROVIDERS[name]
    providers = [p for p in wanted if p in available] + [CPU]
    problems = []
    if name not in ("auto", "cpu"):
        if not providers[:-1]:
            problems.append(f"onnxruntime has no {' or '.join(wanted)} (it has {', '.join(available)})")
        if not gpu_offload:
            problems.append("llama-cpp-python was built without GPU offload "
                            f"(reinstall it with CMAKE_ARGS=\"{LLAMA_REBUILD[name]}\")")
    if problems:
        message = f"device {device!r} unavailable: {'; '.join(problems)}"
        if strict:
            raise DeviceError(message)
        log.warning("moss-edge: %s; falling back to the CPU for that part", message)
    offload = gpu_offload and name != "cpu"
    return DevicePlan(name, providers, ALL_LAYERS if offload else 0)
