"""The errors the runtime raises on purpose.

`InputError` and its subclasses mean the caller handed over something unusable (audio, a
bundle, a checkpoint, a request); the message says what and where. The CLI maps them to exit
code 3 and the server to HTTP 400, each in one place. Any other exception is a bug: exit 1 or
HTTP 500, with the traceback logged.
"""
from __future__ import annotations


class InputError(ValueError):
    """Bad input the caller can fix; the message names the problem."""


class ContextTaken(RuntimeError):
    """A generation went on after a later call on the same model took its llama.cpp context
    (e.g. a half-consumed `ask_stream` iterated after another `transcribe`)."""
