"""benchmarks/nano_ctc_wer.py: greedy CTC decoding reads every row of every chunk, merges
repeats and drops blanks, and names the words of the classes left."""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from nano_ctc_wer import greedy_ctc_words  # noqa: E402
from nano_quality import EVAL_SEED  # noqa: E402

from edge_runtime import features  # noqa: E402
from moss_audio_edge.export.nano.corpus import held_out_clips  # noqa: E402
from moss_audio_edge.export.nano.train import CHUNK_FRAMES, Trainer  # noqa: E402
from moss_audio_edge.export.checkpoint import downsampled_length  # noqa: E402


def test_greedy_decoding_merges_repeats_and_drops_blanks_over_all_rows(tmp_path: Path):
    trainer = Trainer(tmp_path, seed=0, batch_size=1, steps=0, lr=0.0)
    clip = next(c for c in held_out_clips(4, EVAL_SEED, max_seconds=12.0) if len(c.audio) > 1.5 * 16000 * 4)
    frames = len(clip.audio) // features.HOP_LENGTH
    pieces = [CHUNK_FRAMES] * (frames // CHUNK_FRAMES) + ([frames % CHUNK_FRAMES] if frames % CHUNK_FRAMES else [])
    rows = int(downsampled_length(torch.tensor(pieces)).sum())
    blank = trainer.ctc_blank
    # rows in runs of three: first word, second word, blank, first word again, ...
    classes = [(0, 1, blank)[(i // 3) % 3] for i in range(rows)]
    seen = []

    def head(row_states: torch.Tensor) -> torch.Tensor:
        seen.append(len(row_states))
        return F.one_hot(torch.tensor(classes), blank + 1).float()

    trainer.ctc_head = head
    with torch.no_grad():
        found = greedy_ctc_words(trainer, clip)
    assert seen == [rows] and len(pieces) >= 2
    want = [trainer.vocab.words[c] for i, c in enumerate(classes) if c != blank and (i == 0 or classes[i - 1] != c)]
    first, second = trainer.vocab.words[:2]
    assert found == want and found[:4] == [first, second, first, second]
