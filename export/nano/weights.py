"""The nano model's trained weights in compact form, and the published-layout checkpoint.

The tied embedding of the full Qwen vocabulary is 151936 rows, of which the nano model uses
a few hundred; the rest are exactly zero. The compact file stores only the used rows and
their ids (bf16, as the checkpoint itself), so the weights ship in the repository at a few
MB and `write_nano_checkpoint` rebuilds the checkpoint bit for bit.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from edge_runtime.staging import atomic_path

from ..checkpoint_writer import write_checkpoint

EMBEDDING = "language_model.embed_tokens.weight"
USED_IDS = "nano.used_token_ids"
WEIGHTS_FILE = Path(__file__).resolve().parent / "nano-weights.safetensors"


def save_compact(state: dict[str, torch.Tensor], used_ids: list[int], path: Path, metadata: dict[str, str]) -> None:
    """`state`: the trained module's state dict, whose embedding rows are `used_ids` in order."""
    tensors = {name: t.detach().to(torch.bfloat16).contiguous() for name, t in state.items()}
    tensors[USED_IDS] = torch.tensor(used_ids, dtype=torch.int64)
    with atomic_path(path) as partial:
        save_file(tensors, str(partial), metadata=metadata)


def write_nano_checkpoint(config: dict, out_dir: Path, weights: Path = WEIGHTS_FILE,
                          tokenizer_cache: Path | None = None) -> Path:
    compact = load_file(str(weights))
    used = compact.pop(USED_IDS)

    def tensor(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        if name == EMBEDDING:
            full = torch.zeros(shape, dtype=torch.bfloat16)
            full[used] = compact[EMBEDDING]
            return full
        if tuple(compact[name].shape) != tuple(shape):
            raise ValueError(f"{weights}: {name} has shape {tuple(compact[name].shape)}, the config needs {shape}")
        return compact[name]

    return write_checkpoint(out_dir, config, tensor, tokenizer_cache=tokenizer_cache)
