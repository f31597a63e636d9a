"""A GGUF file's tensor directory: where each tensor's bytes lie and how they are typed.

The runtime reads one tensor itself: the token embedding, whose rows it feeds llama.cpp as
embedding rows so that prompt text joins the audio rows' batches (docs/format.md#packed-prefill).
Metadata values are skipped, not decoded.
"""
from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
ALIGNMENT_KEY = "general.alignment"
# GGUF metadata value types: fixed sizes in bytes; STRING and ARRAY are sized by their contents
VALUE_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
STRING, ARRAY, UINT32 = 8, 9, 4
_LENGTH = struct.Struct("<Q")  # a string's byte count


class GGUFFormatError(ValueError):
    pass


@dataclass(frozen=True)
class TensorInfo:
    ggml_type: int
    shape: tuple[int, ...]  # GGUF order: the fastest-varying dimension first
    offset: int  # of the first byte, from the start of the file


class _Cursor:
    def __init__(self, data: mmap.mmap | bytes, path: Path):
        self.data, self.at, self.path = data, 0, path

    def take(self, fmt: str) -> tuple:
        size = struct.calcsize(fmt)
        if self.at + size > len(self.data):
            raise GGUFFormatError(f"{self.path}: GGUF ends inside its header (truncated)")
        values = struct.unpack_from(fmt, self.data, self.at)
        self.at += size
        return values

    def string(self) -> str:
        (length,) = self.take("<Q")
        if self.at + length > len(self.data):
            raise GGUFFormatError(f"{self.path}: GGUF ends inside its header (truncated)")
        text = bytes(self.data[self.at:self.at + length]).decode("utf-8", errors="replace")
        self.at += length
        return text

    def skip_value(self, kind: int) -> None:
        if kind == STRING:
            self.string()
        elif kind == ARRAY:
            element, count = self.take("<IQ")
            if element in VALUE_SIZES:
                self.at += VALUE_SIZES[element] * count
            elif element == STRING:  # a vocabulary: ~150k strings at Qwen's, so a tight loop
                at, length_at = self.at, _LENGTH.unpack_from
                for _ in range(count):
                    at += 8 + length_at(self.data, at)[0]
                self.at = at
            else:
                for _ in range(count):
                    self.skip_value(element)
        elif kind in VALUE_SIZES:
            self.at += VALUE_SIZES[kind]
        else:
            raise GGUFFormatError(f"{self.path}: unknown GGUF value type {kind}")


def read_tensor_directory(path: Path) -> dict[str, TensorInfo]:
    """Every tensor of a GGUF (versions 2 and 3) by name."""
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        cursor = _Cursor(data, path)
        if bytes(data[:4]) != MAGIC:
            raise GGUFFormatError(f"{path}: not a GGUF file (bad magic)")
        cursor.at = 4
        version, n_tensors, n_kv = cursor.take("<IQQ")
        if version < 2:
            raise GGUFFormatError(f"{path}: GGUF version {version} is not read here")
        alignment = DEFAULT_ALIGNMENT
        for _ in range(n_kv):
            key = cursor.string()
            (kind,) = cursor.take("<I")
            if key == ALIGNMENT_KEY and kind == UINT32:
                (alignment,) = cursor.take("<I")
            else:
                cursor.skip_value(kind)
        entries: list[tuple[str, int, tuple[int, ...], int]] = []
        for _ in range(n_tensors):
            name = cursor.string()
            (n_dims,) = cursor.take("<I")
            shape = cursor.take(f"<{n_dims}Q")
            ggml_type, offset = cursor.take("<IQ")
            entries.append((name, ggml_type, shape, offset))
        data_start = -(-cursor.at // alignment) * alignment
        return {name: TensorInfo(ggml_type, tuple(shape), data_start + offset)
                for name, ggml_type, shape, offset in entries}
