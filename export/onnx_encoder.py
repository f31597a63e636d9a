"""Trace the audio side (encoder + adapter + DeepStack mergers) into one ONNX graph.

Input `mel` [n_chunks, n_mels, T] float32 and `lengths` [n_chunks] int64 (valid frames per
chunk); outputs `rows` [n_chunks, T'', (1+K)*hidden], already laid out as llama.cpp's
qwen3vl embedding input wants them, and `token_counts` [n_chunks] int64 (valid rows).
"""
from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from .checkpoint import downsampled_length
from .reference import AudioRowsModel

ONNX_OPSET = 17
INPUT_NAMES = ["mel", "lengths"]
OUTPUT_NAMES = ["rows", "token_counts"]
# protobuf cannot hold a model over 2 GB: larger weights go to an external data file.
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**26


class AudioRowsGraph(nn.Module):
    def __init__(self, model: AudioRowsModel):
        super().__init__()
        self.model = model

    def forward(self, mel: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.audio_rows(mel, lengths), downsampled_length(lengths)


def export_audio_encoder(model: AudioRowsModel, out_path: Path) -> list[str]:
    """Write the graph to `out_path` (plus `<name>.data` when over 2 GB). Returns the files."""
    graph = AudioRowsGraph(model).eval()
    n_mels, frames = model.cfg.audio.num_mel_bins, model.cfg.audio.chunk_frames
    example = (torch.zeros(2, n_mels, frames), torch.tensor([frames, frames // 2]))
    n_params = sum(p.numel() for p in graph.parameters())
    large = n_params * 4 > EXTERNAL_DATA_THRESHOLD
    # Traced in a scratch folder: the exporter may spill weights beside its output.
    with tempfile.TemporaryDirectory(dir=out_path.parent) as scratch, torch.no_grad(), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = Path(scratch) / "traced.onnx"
        torch.onnx.export(
            graph, example, str(traced), input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
            dynamic_axes={"mel": {0: "n_chunks", 2: "frames"}, "lengths": {0: "n_chunks"},
                          "rows": {0: "n_chunks", 1: "tokens"}, "token_counts": {0: "n_chunks"}},
            opset_version=ONNX_OPSET, dynamo=False,
        )
        proto = onnx.load(str(traced), load_external_data=True)
    if large:
        data_name = out_path.name + ".data"
        onnx.save_model(proto, str(out_path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name, size_threshold=1024)
        return [out_path.name, data_name]
    onnx.save_model(proto, str(out_path))
    return [out_path.name]
