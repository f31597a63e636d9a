"""The external-data files an ONNX model refers to, read from its protobuf without `onnx`.

A tensor stored outside the model names its file in `external_data` (`location`, relative to
the model's directory), and onnxruntime opens that file when the model loads. The runtime
does not depend on `onnx`, so this walks the protobuf wire format itself, through every place
a tensor can sit: graph initializers, sparse initializers, node attributes (subgraphs
included), functions and training graphs (onnx.proto). Weights are skipped, not read: the
file is memory-mapped and a multi-GB model costs a few page reads.

A file this walker cannot parse could not be parsed by onnxruntime's protobuf either, so it
is refused rather than half-walked (a half-walk could miss a reference).
"""
from __future__ import annotations

import mmap
from pathlib import Path

# message -> {field number: message it holds}, for the fields that can lead to a TensorProto
# (onnx.proto: ModelProto.graph = 7, GraphProto.initializer = 5, ...)
_CHILDREN: dict[str, dict[int, str]] = {
    "model": {7: "graph", 20: "training", 25: "function"},
    "training": {1: "graph", 2: "graph"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attribute"},
    "function": {7: "node", 11: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
}
_EXTERNAL_DATA = 13  # TensorProto.external_data: StringStringEntryProto {key = 1, value = 2}
_MAX_DEPTH = 100  # protobuf's own recursion limit: deeper files do not load in onnxruntime


class MalformedOnnx(ValueError):
    """The bytes are not a protobuf message (so not an ONNX model)."""


def external_locations(path: Path) -> list[str]:
    """Every `location` named by a tensor's external_data in the ONNX model at `path`."""
    with path.open("rb") as f:
        if f.seek(0, 2) == 0:
            return []
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            buf = memoryview(mapped)
            try:
                return _walk(buf)
            finally:
                buf.release()


def _walk(buf: memoryview) -> list[str]:
    found: list[str] = []
    stack = [("model", 0, len(buf), 0)]  # (message, start, end, depth)
    while stack:
        kind, start, end, depth = stack.pop()
        if depth > _MAX_DEPTH:
            raise MalformedOnnx(f"messages nested deeper than {_MAX_DEPTH}")
        for number, lo, hi in _fields(buf, start, end):
            if hi < 0:
                continue  # not length-delimited: no message inside
            if kind == "tensor":
                if number == _EXTERNAL_DATA:
                    key, value = _entry(buf, lo, hi)
                    if key == "location":
                        found.append(value)
            elif number in _CHILDREN[kind]:
                stack.append((_CHILDREN[kind][number], lo, hi, depth + 1))
    return found


def _entry(buf: memoryview, start: int, end: int) -> tuple[str, str]:
    strings = {1: "", 2: ""}
    for number, lo, hi in _fields(buf, start, end):
        if number in strings and hi >= 0:
            try:
                strings[number] = bytes(buf[lo:hi]).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise MalformedOnnx(f"external_data entry is not UTF-8 ({exc})") from None
    return strings[1], strings[2]


def _fields(buf: memoryview, start: int, end: int):
    """(field number, start, end) of each field; start = end = -1 unless length-delimited."""
    pos = start
    while pos < end:
        tag, pos = _varint(buf, pos, end)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise MalformedOnnx(f"field number 0 at byte {pos}")
        if wire == 2:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise MalformedOnnx(f"field {number} runs past its message at byte {pos}")
            yield number, pos, pos + length
            pos += length
            continue
        pos = _skip(buf, pos, end, number, wire)
        yield number, -1, -1


def _skip(buf: memoryview, pos: int, end: int, number: int, wire: int) -> int:
    if wire == 0:
        return _varint(buf, pos, end)[1]
    if wire in (1, 5):
        pos += 8 if wire == 1 else 4
    elif wire == 3:  # a group: fields up to its matching end-group tag
        while True:
            tag, pos = _varint(buf, pos, end)
            if tag & 7 == 4:
                if tag >> 3 != number:
                    raise MalformedOnnx(f"mismatched end of group {number} at byte {pos}")
                return pos
            if tag >> 3 == 0:
                raise MalformedOnnx(f"field number 0 at byte {pos}")
            if tag & 7 == 2:
                length, pos = _varint(buf, pos, end)
                pos += length
            else:
                pos = _skip(buf, pos, end, tag >> 3, tag & 7)
            if pos > end:
                break
    else:
        raise MalformedOnnx(f"wire type {wire} of field {number} at byte {pos}")
    if pos > end:
        raise MalformedOnnx(f"field {number} runs past its message")
    return pos


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while shift < 70:
        if pos >= end:
            raise MalformedOnnx(f"truncated varint at byte {pos}")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    raise MalformedOnnx(f"varint longer than 10 bytes at byte {pos}")
