"""What the nano model's audio side alone hears, per saved training state: the word error rate
of greedy decoding with the training-only CTC head, on the benchmark's held-out clean clips.

A diagnostic for the training recipe, not for the shipped model (which has no CTC head): how
well the encoder has learned the words at a given step, on clips of up to 20 s (several 4 s
chunks, each encoded alone, many starting mid-speech) and on clips of about one chunk (which
start in silence). A state is a training run's `state.pt` (or a copy of it).

    python benchmarks/nano_ctc_wer.py --state end=/tmp/nano/state.pt [--state other=PATH] --clips 80

Writes benchmarks/results/nano_ctc_wer.{json,md}. Needs espeak-ng and the export extra.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from moss_audio_edge.export.nano.corpus import Clip, held_out_clips, word_errors, words
from moss_audio_edge.export.nano.train import CHUNK_SECONDS, MAX_CLIP_SECONDS, Trainer, check_state_vocabulary, torch_log_mel
from nano_quality import EVAL_SEED
from results_file import provenance, stamp, write_results  # benchmarks/ is the script's directory

CLIP_LENGTHS = {"20 s": MAX_CLIP_SECONDS, "4 s": CHUNK_SECONDS}  # the longest clip each set may hold


def greedy_ctc_words(trainer: Trainer, clip: Clip) -> list[str]:
    """The clip chunked as at inference, each chunk's rows through the CTC head, argmax,
    repeats merged and blanks dropped: the words of the remaining classes."""
    mel = torch_log_mel(clip.audio, trainer.filters, trainer.window)
    rows = trainer.model.encode_audio(mel)[:, : trainer.model.cfg.language.hidden_size]
    found, previous = [], None
    for best in trainer.ctc_head(rows).argmax(-1).tolist():
        if best != previous and best != trainer.ctc_blank:
            found.append(trainer.vocab.words[best])
        previous = best
    return found


def score_state(path: Path, clip_sets: dict[str, list[Clip]], scratch: Path) -> dict:
    trainer = Trainer(scratch, seed=0, batch_size=1, steps=0, lr=0.0)
    state = torch.load(path, weights_only=False)
    try:
        check_state_vocabulary(state, trainer.vocab, path)
    except RuntimeError as error:
        raise SystemExit(str(error)) from None
    trainer.model.load_state_dict(state["model"])
    trainer.ctc_head.load_state_dict(state["ctc_head"])
    trainer.model.eval()
    scores = {"step": state["step"]}
    with torch.no_grad():
        for name, clips in clip_sets.items():
            truth = [words(" ".join(s.text for s in clip.sentences)) for clip in clips]
            errors = sum(word_errors(t, greedy_ctc_words(trainer, c)) for t, c in zip(truth, clips))
            reference_words = sum(len(t) for t in truth)
            scores[name] = {"words": reference_words, "wer": errors / reference_words}
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state", action="append", required=True, metavar="NAME=PATH",
                        help="a saved training state to score (repeatable)")
    parser.add_argument("--clips", type=int, default=80, help="clips per set")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    named = [s.split("=", 1) for s in args.state]
    clip_sets = {name: held_out_clips(args.clips, EVAL_SEED, max_seconds=seconds) for name, seconds in CLIP_LENGTHS.items()}
    rows = []
    with tempfile.TemporaryDirectory() as scratch:  # the trainer's tokenizer files
        for name, path in named:
            rows.append({"state": name, "path": path, **score_state(Path(path), clip_sets, Path(scratch))})
            print(json.dumps(rows[-1]), flush=True)
    command = f"python benchmarks/nano_ctc_wer.py --clips {args.clips}" + "".join(f" --state '{n}={p}'" for n, p in named)
    result = {**stamp(command), "clips_per_set": args.clips, "eval_seed": EVAL_SEED, "rows": rows}
    lines = [f"# Nano training states: greedy-CTC word error rate ({args.clips} held-out clean clips per set)", "",
             provenance(result), "",
             "The training-only CTC head on the rows the LLM would receive, the clip chunked as at inference. "
             "Clips of up to 20 s span several chunks; clips of up to 4 s mostly one.", "",
             "| state | step | " + " | ".join(f"WER, clips <= {n}" for n in CLIP_LENGTHS) + " |",
             "|---|---|" + "---|" * len(CLIP_LENGTHS)]
    for row in rows:
        cells = [f"{100 * row[n]['wer']:.1f}% ({row[n]['words']} words)" for n in CLIP_LENGTHS]
        lines.append(f"| {row['state']} | {row['step']} | " + " | ".join(cells) + " |")
    write_results("nano_ctc_wer", result, lines)


if __name__ == "__main__":
    main()
