"""The ONNX audio encoder: log-mel chunks in, LLM-ready rows out."""
from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .bundle import AudioParams, BundleError


def split_chunks(mel: np.ndarray, chunk_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """[n_mels, T] -> ([n, n_mels, width], valid lengths [n]). Chunks of `chunk_frames`, the
    last holding the remainder. As upstream batches them, a multi-chunk clip zero-pads its
    last chunk to the full width while a single chunk keeps its own length: the convolutions
    see those padded frames, so this choice is part of what the model computes."""
    total = mel.shape[1]
    n = max(1, -(-total // chunk_frames))
    width = chunk_frames if n > 1 else total
    batch = np.zeros((n, mel.shape[0], width), dtype=np.float32)
    lengths = np.empty(n, dtype=np.int64)
    for i in range(n):
        piece = mel[:, i * chunk_frames:(i + 1) * chunk_frames]
        batch[i, :, : piece.shape[1]] = piece
        lengths[i] = piece.shape[1]
    return batch, lengths


# glibc's; other C libraries (macOS, musl) have none
_MALLOC_TRIM = getattr(ctypes.CDLL(None), "malloc_trim", None)


def _return_freed_heap() -> None:
    """Hand the heap glibc keeps after onnxruntime built a session or ran one back to the
    system: building a session leaves the parsed model and the weights before prepacking
    freed but resident, each run its activations (docs/devices.md#memory)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


class AudioEncoder:
    def __init__(self, path: Path, audio: AudioParams, row_width: int,
                 providers: list[str] | None = None, threads: int | None = None):
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Without the arena a chunk's activations go back to the heap when it is encoded
        # instead of staying reserved while the LLM works (docs/devices.md#memory)
        options.enable_cpu_mem_arena = False
        try:
            self.session = ort.InferenceSession(str(path), options,
                                                providers=providers or ["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise BundleError(f"{path}: cannot load the ONNX audio encoder ({exc})") from exc
        _return_freed_heap()
        self.audio = audio
        self.row_width = row_width
        width = self.session.get_outputs()[0].shape[-1]
        if isinstance(width, int) and width != row_width:
            raise BundleError(f"{path}: encoder rows are {width} wide, the manifest says {row_width}")

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def encode_chunks(self, batch: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
        """Each chunk's valid rows, [tokens_i, row_width] float32.

        One chunk per run: an int8 encoder quantizes its activations with one scale per run, so
        a chunk's rows would depend on which chunks share its run; one at a time, a chunk's rows
        are the same offline and streamed (docs/format.md#last-chunk-padding)."""
        out: list[np.ndarray] = []
        for i in range(len(batch)):
            rows, counts = self.session.run(None, {"mel": batch[i:i + 1], "lengths": lengths[i:i + 1]})
            out.append(rows[0, : int(counts[0])])
        _return_freed_heap()
        return out

    def encode(self, mel: np.ndarray) -> np.ndarray:
        """A whole clip's mel [n_mels, T] -> [N, row_width]."""
        batch, lengths = split_chunks(mel, self.audio.chunk_frames)
        return np.concatenate(self.encode_chunks(batch, lengths), axis=0)
