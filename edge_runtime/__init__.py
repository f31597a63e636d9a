"""MOSS-Audio on the device: `from edge_runtime import MossAudio`.

The names below load on first use, so `moss-edge --version` (and anything else that only
imports this package) does not load onnxruntime or llama.cpp.
"""
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("moss-audio-edge")  # pyproject.toml holds the one version number
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

# public name -> the module that defines it
_LAZY = {
    "MossAudio": "transcribe", "Generation": "transcribe", "TranscriptionInfo": "transcribe",
    "Segment": "timestamps", "Word": "timestamps",
    "Answer": "answer", "AnswerDelta": "answer", "AnswerStream": "answer",
    "StreamEvent": "stream",
    "InputError": "errors", "ContextTaken": "errors", "AudioError": "audio", "BundleError": "bundle",
    "DeviceError": "device",
}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
