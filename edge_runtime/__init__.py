__version__ = "0.1.0"

_LAZY = {"MossAudio": "transcribe", "Segment": "timestamps", "Word": "timestamps"}


def __getattr__(name: str):
    # `from edge_runtime import MossAudio` without loading onnxruntime/llama.cpp for `--version`
    if name in _LAZY:
        from importlib import import_module
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
