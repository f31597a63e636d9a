"""Train the nano MOSS-Audio from scratch on synthesised command speech.

The model is `moss_audio_edge.export.reference.MossAudioReference` itself (the module the export traces and
the parity tests trust) with a small config; the result is saved as compact weights
(export/nano/weights.py) that rebuild a checkpoint in the published layout, so the ordinary
exporter turns it into a bundle (export/nano/release.py).

Only the few hundred token ids the prompts and answers use are trained. Every other row of
the tied embedding stays exactly zero, so its logit is exactly 0, and the loss adds those
(vocab - used) zero logits to the softmax's normaliser: the training loss is the true
full-vocabulary cross-entropy of the exported model, at a fraction of the cost.

Training has two phases. The audio side (encoder, adapter, DeepStack mergers) first learns
the words alone, by CTC on single-chunk clips: a 4 s chunk is encoded independently of its
neighbours, so short clips teach the encoder everything long ones would, many times faster
without the LLM. Then the whole model trains on the real tasks with clips up to 20 s.
In both phases two more training-only heads shape the rows for the timestamps: one asks each
row for its index in its chunk, the other asks each row inside a sentence for the index of that
sentence's start and end rows (where they lie in its chunk). Every row of a sentence is to hold
where it begins and ends, so that the LLM may read a time marker's digits from any of them rather
than from the one boundary row (whether it does: benchmarks/nano_timestamp_digits.py).
In the joint phase, clips drawn for the timestamp task are composed without noise or echo, so that
it learns the boundaries where they are sharp (the transcription task keeps the augmentation).
There is no SpecAugment: in a 2000-step trial of the encoder phase its masks cost words on
held-out voices (greedy-CTC WER, benchmarks/nano_ctc_wer.py); the speed, pitch, gain, noise and
echo the corpus varies are the augmentation.

    python -m moss_audio_edge.export.nano.train --work-dir /tmp/nano --encoder-steps 5000 --steps 7500
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from edge_runtime import features
from edge_runtime.prompt import SENTENCE_TIMESTAMPS, TRANSCRIBE
from edge_runtime.staging import atomic_path

from ..checkpoint import downsampled_length, parse_config
from ..reference import MossAudioReference, prompt_ids
from ..checkpoint_writer import PUBLISHED_PROCESSOR_CONFIG, config_with
from ..tokenizer_writer import write_tokenizer_files
from . import corpus
from .weights import save_compact

NANO_CONFIG = config_with(
    audio=dict(d_model=192, output_dim=192, encoder_layers=4, encoder_attention_heads=4, encoder_ffn_dim=768,
               downsample_hidden_size=32, deepstack_encoder_layer_indexes=[1, 2]),
    language=dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=32),
    adapter_hidden_size=384, deepstack_num_inject_layers=2, tie_word_embeddings=True)
INSTRUCTIONS = (TRANSCRIBE, SENTENCE_TIMESTAMPS)
IM_END = 151645
MAX_CLIP_SECONDS = 20.0
CHUNK_FRAMES = NANO_CONFIG["audio_config"]["n_window"] * 2  # mel frames per encoder chunk (4 s)
CHUNK_SECONDS = CHUNK_FRAMES * features.HOP_LENGTH / features.SAMPLE_RATE
CTC_WEIGHT = 1.0
CHUNK_ROWS = downsampled_length(CHUNK_FRAMES)  # LLM rows per full chunk
# CTC alone lets the rows forget where in their chunk they sit, which the timestamps' tenths
# and hundredths depend on; a small weight keeps that position without crowding CTC.
POSITION_WEIGHT = 0.2
BOUNDARY_WEIGHT = 0.5
BOUNDARY_MARGIN_SECONDS = 0.1  # rows this close outside a sentence also learn its boundaries
ROW_SECONDS = CHUNK_SECONDS / CHUNK_ROWS
LENGTH_RAMP_SHARE = 0.4  # clips grow from one chunk to MAX_CLIP_SECONDS over this share of the joint phase
ENCODER_BATCH_SIZE = 16  # clips per step of the encoder phase (one chunk each: cheap)
# The encoder's learning-rate share in the joint phase: at the full rate the untrained LLM's
# gradient undoes part of what the encoder phase learned (its CTC loss rose 1.24 -> 1.9).
JOINT_ENCODER_LR_SCALE = 0.3
# The encoder phase's share that anneals its rate: continuing a held-rate phase for 500 steps of
# cosine decay took its CTC loss from 0.86 to 0.62.
ENCODER_DECAY_SHARE = 0.2
# Sequences per LLM pass in the joint phase: sorted by length and padded only to the longest of
# their group, batches of clips of 1-20 s take less LLM time than padded as one
# (benchmarks/results/nano_train_speed.md, against the trainer before).
LENGTH_GROUP_SIZE = 3


@dataclass
class Batch:
    chunks: torch.Tensor  # [n, n_mels, chunk_frames], every clip's chunks in order
    lengths: torch.Tensor  # [n] valid frames per chunk
    ids: torch.Tensor  # [B, T] prompt + answer, right-padded
    sequence_lengths: torch.Tensor  # [B] prompt + answer
    labels: torch.Tensor  # [B, T] answer ids where predicted, -100 elsewhere
    ctc_targets: torch.Tensor  # every clip's transcript as word classes, concatenated
    ctc_lengths: torch.Tensor  # [B]
    rows_per_clip: torch.Tensor  # [B] encoder rows of each clip
    boundary_rows: torch.Tensor  # [rows, 2] each row's sentence's start and end row in its chunk, or -100


class Vocabulary:
    """The used token ids <-> compact training ids, and the grammar's words <-> CTC classes."""

    def __init__(self, ids: set[int], words: set[str]):
        self.ids = sorted(ids)
        self.index = {t: i for i, t in enumerate(self.ids)}
        self.words = sorted(words)
        self.word_index = {w: i for i, w in enumerate(self.words)}

    def compact(self, ids: list[int]) -> list[int]:
        return [self.index[t] for t in ids]

    def word_classes(self, sentences: list[corpus.Sentence]) -> list[int]:
        return [self.word_index[w] for s in sentences for w in s.text.split()]


def collect_vocabulary(encode, processor_ids: tuple[int, int, int], seed: int) -> Vocabulary:
    """Every id a training sequence can hold (prompts, markers, answers) and every word of
    its sentences, from many sentences."""
    rng = random.Random(seed)
    ids: set[int] = {IM_END, 151643, *processor_ids}
    words: set[str] = set()
    for instruction in INSTRUCTIONS:
        ids.update(prompt_ids(25 * 12, encode, instruction, processor_ids))
    for _ in range(20000):
        text = corpus.random_sentence(rng)
        words.update(text.split())
        start, end = rng.uniform(0, 19), rng.uniform(0, 20)
        clip = corpus.Clip(np.zeros(0, np.float32), [corpus.Sentence(start, end, text)] * 2, None)
        ids.update(encode(clip.transcript))
        ids.update(encode(clip.timestamped))
    return Vocabulary(ids, words)


def cosine_to_floor(progress: float) -> float:
    """The learning-rate factor `progress` (0 to 1) along a half cosine from 1 to 5%."""
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def boundary_rows(sentences: list[corpus.Sentence], chunk_start: float, n_rows: int) -> torch.Tensor:
    """For each of a chunk's rows inside a sentence (give or take the margin): the in-chunk
    index of the row where that sentence starts and of the row where it ends; -100 where the
    row is in no sentence or the boundary lies in another chunk (which this one cannot see)."""
    targets = torch.full((n_rows, 2), -100, dtype=torch.long)
    centres = chunk_start + (np.arange(n_rows) + 0.5) * ROW_SECONDS
    for sentence in sentences:
        inside = torch.from_numpy((centres >= sentence.start - BOUNDARY_MARGIN_SECONDS)
                                  & (centres <= sentence.end + BOUNDARY_MARGIN_SECONDS))
        for column, time in enumerate((sentence.start, sentence.end)):
            row = math.floor((time - chunk_start) / ROW_SECONDS)
            if 0 <= row < CHUNK_ROWS:
                targets[inside, column] = row
    return targets


def torch_log_mel(audio: np.ndarray, filters: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """features.log_mel_spectrogram in torch (float32): [n_mels, len(audio) // hop]."""
    x = torch.from_numpy(audio.astype(np.float32))
    n_frames = len(audio) // features.HOP_LENGTH
    spec = torch.stft(x, features.N_FFT, features.HOP_LENGTH, window=window, center=True,
                      pad_mode="reflect", return_complex=True)[:, :n_frames]
    mel = filters @ spec.abs().pow(2)
    log_mel = mel.clamp_min(features.MEL_FLOOR).log10()
    return (torch.maximum(log_mel, log_mel.max() - features.DYNAMIC_RANGE) + 4.0) / 4.0


class Trainer:
    def __init__(self, work_dir: Path, seed: int, batch_size: int, steps: int, lr: float, encoder_steps: int = 0):
        self.work_dir = work_dir
        self.batch_size, self.lr = batch_size, lr
        self.encoder_steps, self.steps = encoder_steps, encoder_steps + steps  # steps: both phases
        torch.manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        tokenizer_dir = work_dir / "tokenizer"
        write_tokenizer_files(tokenizer_dir, cache_dir=work_dir / "tokenizer-cache")
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        self.encode = lambda text: tokenizer.encode(text, add_special_tokens=False)
        full = parse_config(NANO_CONFIG, PUBLISHED_PROCESSOR_CONFIG)
        p = full.processor
        self.processor_ids = (p.audio_token_id, p.audio_start_id, p.audio_end_id)
        self.vocab = collect_vocabulary(self.encode, self.processor_ids, seed)
        self.full_config = full
        # The trained module: the real architecture with the compact vocabulary.
        compact = dataclasses.replace(
            full, language=dataclasses.replace(full.language, vocab_size=len(self.vocab.ids)),
            processor=dataclasses.replace(p, audio_token_id=self.vocab.index[p.audio_token_id]))
        self.model = MossAudioReference(compact)
        nn_init(self.model)
        # Channels-last convolution kernels: the encoder's forward and backward run faster (the
        # same arithmetic in another memory order; benchmarks/results/nano_train_speed.md).
        self.model.audio_encoder.to(memory_format=torch.channels_last)
        self.unused_log_count = math.log(full.language.vocab_size - len(self.vocab.ids))
        self.filters = torch.from_numpy(features.mel_filters().astype(np.float32))
        self.window = torch.from_numpy(features.hann_window().astype(np.float32))
        self.bank: list[list[corpus.Utterance]] = []
        # Training-only head (not exported): CTC on the adapter's rows makes the encoder
        # learn the words early instead of the LLM learning only which commands are likely.
        # Its classes are whole words: a row then stands for a word, not for one of the word's
        # tokens, whose split the audio does not show.
        self.ctc_head = torch.nn.Linear(full.language.hidden_size, len(self.vocab.words) + 1)
        self.ctc_blank = len(self.vocab.words)
        # Training-only heads (not exported): each row names its index in its chunk, and the
        # indices of its sentence's start and end rows.
        self.position_head = torch.nn.Linear(full.language.hidden_size, CHUNK_ROWS)
        self.boundary_head = torch.nn.Linear(full.language.hidden_size, 2 * CHUNK_ROWS)
        self.trained_parameters = [*self.model.parameters(), *self.ctc_head.parameters(),
                                   *self.position_head.parameters(), *self.boundary_head.parameters()]
        encoder = list(self.model.audio_encoder.parameters())
        rest = [p for p in self.trained_parameters if all(p is not q for q in encoder)]
        groups = [{"params": encoder, "encoder": True}, {"params": rest, "encoder": False}]
        self.optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
        self.step = 0

    # --- data ----------------------------------------------------------------------------

    def load_or_build_bank(self, n_voices: int, sentences_per_voice: int, seed: int) -> None:
        path = self.work_dir / f"bank-{n_voices}x{sentences_per_voice}-{seed}.npz"
        if not path.exists():
            split = corpus.split_variants()
            started = time.perf_counter()
            bank = corpus.build_bank(n_voices, sentences_per_voice, split.train_variants, corpus.TRAIN_SPEEDS, seed)
            corpus.save_bank(bank, path)
            print(f"synthesised {n_voices * sentences_per_voice} utterances in {time.perf_counter() - started:.0f} s",
                  flush=True)
        self.bank = corpus.load_bank(path)

    def check_front_end(self) -> float:
        """The torch log-mel must be the runtime's (float32 rounding only)."""
        clip = corpus.compose_clip(self.bank[0], np.random.default_rng(0), 8.0, augment=1.0)
        want = features.log_mel_spectrogram(clip.audio)
        got = torch_log_mel(clip.audio, self.filters, self.window).numpy()
        error = float(np.abs(got - want).max())
        if got.shape != want.shape or error > 1e-3:
            raise RuntimeError(f"training front end differs from the runtime's: {got.shape} vs {want.shape}, {error}")
        return error

    def encoder_phase(self, step: int) -> bool:
        return step < self.encoder_steps

    def max_clip_seconds(self, step: int) -> float:
        """One chunk in the encoder phase; then a length curriculum: one or two commands
        (<= 4 s) at first, up to 20 s clips by 40% of the joint phase."""
        if self.encoder_phase(step):
            return CHUNK_SECONDS
        joint = self.steps - self.encoder_steps
        progress = (step - self.encoder_steps) / (LENGTH_RAMP_SHARE * joint)
        return min(MAX_CLIP_SECONDS, CHUNK_SECONDS + (MAX_CLIP_SECONDS - CHUNK_SECONDS) * progress)

    def augment_strength(self, step: int) -> float:
        """Clean speech first; echo and noise reach full strength halfway through the encoder
        phase (or at once without one)."""
        return min(1.0, step / (0.5 * self.encoder_steps)) if self.encoder_steps else 1.0

    def batch(self, step: int) -> Batch:
        chunks, lengths, sequences, ctc_targets, rows_per_clip, boundaries = [], [], [], [], [], []
        encoder_phase = self.encoder_phase(step)
        for _ in range(ENCODER_BATCH_SIZE if encoder_phase else self.batch_size):
            group = self.bank[int(self.rng.integers(len(self.bank)))]
            timestamps = self.rng.random() < 0.5
            clean = timestamps and not encoder_phase  # the encoder phase has no answers
            clip = corpus.compose_clip(group, self.rng, self.max_clip_seconds(step),
                                       augment=0.0 if clean else self.augment_strength(step))
            mel = torch_log_mel(clip.audio, self.filters, self.window)
            n_rows = 0
            for index, piece in enumerate(mel.split(CHUNK_FRAMES, dim=1)):
                chunks.append(F.pad(piece, (0, CHUNK_FRAMES - piece.shape[1])))
                lengths.append(piece.shape[1])
                valid = downsampled_length(piece.shape[1])
                boundaries.append(boundary_rows(clip.sentences, index * CHUNK_SECONDS, valid))
                n_rows += valid
            instruction = SENTENCE_TIMESTAMPS if timestamps else TRANSCRIBE
            prompt = prompt_ids(n_rows, self.encode, instruction, self.processor_ids)
            answer = self.encode(clip.timestamped if timestamps else clip.transcript) + [IM_END]
            sequences.append((self.vocab.compact(prompt), self.vocab.compact(answer)))
            ctc_targets.append(self.vocab.word_classes(clip.sentences))
            rows_per_clip.append(n_rows)
        width = max(len(p) + len(a) for p, a in sequences)
        pad = self.vocab.index[IM_END]
        ids = torch.full((len(sequences), width), pad, dtype=torch.long)
        labels = torch.full((len(sequences), width), -100, dtype=torch.long)
        for b, (prompt, answer) in enumerate(sequences):
            ids[b, : len(prompt) + len(answer)] = torch.tensor(prompt + answer)
            labels[b, len(prompt): len(prompt) + len(answer)] = torch.tensor(answer)
        return Batch(torch.stack(chunks), torch.tensor(lengths), ids, torch.tensor([len(p) + len(a) for p, a in sequences]),
                     labels, torch.tensor([t for target in ctc_targets for t in target]),
                     torch.tensor([len(t) for t in ctc_targets]), torch.tensor(rows_per_clip), torch.cat(boundaries))

    # --- optimisation --------------------------------------------------------------------

    def loss(self, batch: Batch, with_answer: bool = True) -> tuple[torch.Tensor, ...]:
        """(answer cross-entropy, or 0 without the LLM; CTC of the transcript on the rows the
        LLM receives; cross-entropy of each such row's index in its chunk; cross-entropy of
        its sentence's start and end rows)."""
        rows = self.model.audio_rows(batch.chunks, batch.lengths)
        valid = downsampled_length(batch.lengths).tolist()
        rows = torch.cat([rows[i, :v] for i, v in enumerate(valid)])  # sample-major order
        answer = self.answer_loss(batch, rows) if with_answer else torch.zeros(())
        main_rows = rows[:, : self.model.cfg.language.hidden_size]
        padded = torch.nn.utils.rnn.pad_sequence(list(main_rows.split(batch.rows_per_clip.tolist())))  # [T, B, hidden]
        ctc = F.ctc_loss(self.ctc_head(padded).log_softmax(-1), batch.ctc_targets, batch.rows_per_clip,
                         batch.ctc_lengths, blank=self.ctc_blank, zero_infinity=True)
        index_in_chunk = torch.cat([torch.arange(v) for v in valid])
        position = F.cross_entropy(self.position_head(main_rows), index_in_chunk)
        boundary = F.cross_entropy(self.boundary_head(main_rows).view(-1, CHUNK_ROWS), batch.boundary_rows.view(-1),
                                   ignore_index=-100)
        return answer, ctc, position, boundary

    def answer_loss(self, batch: Batch, rows: torch.Tensor) -> torch.Tensor:
        """The answers' cross-entropy over the batch. The sequences go through the LLM in groups
        of similar length, each padded to its own longest: right padding changes nothing before
        it (the attention is causal), so the loss is the whole padded batch's."""
        rows_of_clip = rows.split(batch.rows_per_clip.tolist())
        lengths = batch.sequence_lengths.tolist()
        by_length = sorted(range(len(lengths)), key=lengths.__getitem__)
        states, targets = [], []
        for first in range(0, len(by_length), LENGTH_GROUP_SIZE):
            group = by_length[first:first + LENGTH_GROUP_SIZE]
            width = max(lengths[i] for i in group)
            hidden = self.model.hidden_states(batch.ids[group, :width], torch.cat([rows_of_clip[i] for i in group]))
            labels = batch.labels[group, 1:width]
            predicted = labels != -100
            states.append(hidden[:, :-1][predicted])
            targets.append(labels[predicted])
        h = torch.cat(states)
        logits = h @ self.model.output_weight().T
        unused = torch.full((len(h), 1), self.unused_log_count)  # (vocab - used) logits of exactly 0
        return F.cross_entropy(torch.cat([logits, unused], dim=1), torch.cat(targets))

    def learning_rate(self) -> float:
        """Each phase warms up (the LLM starts untrained in the joint one); the encoder phase
        then holds the rate and ends with a cosine to 5% over its last ENCODER_DECAY_SHARE, the
        joint phase follows a cosine to 5% throughout."""
        if self.encoder_phase(self.step):
            decay_start = (1 - ENCODER_DECAY_SHARE) * self.encoder_steps
            if self.step < decay_start:
                return self.lr * min(1.0, (self.step + 1) / 50)
            return self.lr * cosine_to_floor((self.step - decay_start) / (ENCODER_DECAY_SHARE * self.encoder_steps))
        step, steps, warmup = self.step - self.encoder_steps, self.steps - self.encoder_steps, 300
        if step < warmup:
            return self.lr * (step + 1) / warmup
        return self.lr * cosine_to_floor((step - warmup) / max(1, steps - warmup))

    def train(self, log_every: int, save_every: int, stop_after: int | None = None) -> None:
        """Train to the end of the schedule, or only to step `stop_after` (the state saved
        there: a later run resumes it, with the same schedule or another --steps)."""
        last = self.steps if stop_after is None else min(stop_after, self.steps)
        self.model.train()
        started, losses = time.perf_counter(), []
        # Each batch is composed just before its step. (A thread composing the next one beside
        # the step was slower on 2 cores: its torch calls contended with the step's threads.)
        while self.step < last:
            self.train_step(self.batch(self.step), losses)
            if self.step % log_every == 0:
                elapsed = time.perf_counter() - started
                answer, ctc, position, boundary = np.mean(losses, axis=0)
                print(json.dumps({"step": self.step, "loss": round(float(answer), 4), "ctc": round(float(ctc), 4),
                                  "position": round(float(position), 4), "boundary": round(float(boundary), 4),
                                  "lr": round(self.learning_rate(), 6), "elapsed_s": round(elapsed),
                                  "phase": "encoder" if self.encoder_phase(self.step - 1) else "joint"}),
                      flush=True)
                losses = []
            if self.step % save_every == 0 or self.step == last:
                self.save_state()

    def train_step(self, batch: Batch, losses: list[tuple[float, ...]]) -> None:
        joint = not self.encoder_phase(self.step)
        for group in self.optimizer.param_groups:
            scale = JOINT_ENCODER_LR_SCALE if group["encoder"] and joint else 1.0
            group["lr"] = self.learning_rate() * scale
        answer, ctc, position, boundary = self.loss(batch, with_answer=joint)
        self.optimizer.zero_grad(set_to_none=True)
        (answer + CTC_WEIGHT * ctc + POSITION_WEIGHT * position + BOUNDARY_WEIGHT * boundary).backward()
        torch.nn.utils.clip_grad_norm_(self.trained_parameters, 1.0)
        self.optimizer.step()
        self.step += 1
        losses.append((answer.item(), ctc.item(), position.item(), boundary.item()))

    def save_state(self) -> None:
        """Everything a resumed run needs, the data generator included: it composes the next
        batch from where this run would have."""
        state = {"model": self.model.state_dict(), "ctc_head": self.ctc_head.state_dict(),
                 "position_head": self.position_head.state_dict(),
                 "boundary_head": self.boundary_head.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "step": self.step, "vocab": self.vocab.ids, "ctc_words": self.vocab.words,
                 "rng": self.rng.bit_generator.state, "torch_rng": torch.get_rng_state()}
        with atomic_path(self.work_dir / "state.pt") as partial:
            torch.save(state, partial)

    def load_state(self) -> bool:
        path = self.work_dir / "state.pt"
        if not path.exists():
            return False
        state = torch.load(path, weights_only=False)
        check_state_vocabulary(state, self.vocab, path)
        missing = [head for head in ("position_head", "boundary_head") if head not in state]
        if missing:
            raise RuntimeError(f"{path} was saved by an older recipe without {' and '.join(missing)}: "
                               "train in a new --work-dir")
        self.model.load_state_dict(state["model"])
        self.ctc_head.load_state_dict(state["ctc_head"])
        self.position_head.load_state_dict(state["position_head"])
        self.boundary_head.load_state_dict(state["boundary_head"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = state["step"]
        self.rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        return True

    def save_weights(self, path: Path) -> None:
        save_compact(self.model.state_dict(), self.vocab.ids, path,
                     {"steps": str(self.step), "encoder_steps": str(self.encoder_steps),
                      "batch_size": str(self.batch_size), "lr": str(self.lr)})


def check_state_vocabulary(state: dict, vocab: Vocabulary, path: Path) -> None:
    """A saved state's token ids and CTC words must be this trainer's."""
    if state["vocab"] != vocab.ids:
        raise RuntimeError(f"{path} was trained with another vocabulary")
    if state.get("ctc_words") != vocab.words:
        raise RuntimeError(f"{path} has a CTC head over other classes (an older recipe's tokens?): "
                           "train in a new --work-dir")


def nn_init(model: MossAudioReference) -> None:
    """Small embeddings: they double as the output layer. A convolution stem that keeps the
    signal's scale: with PyTorch's default init each GELU convolution shrank it about threefold,
    so the stem's output was ~1% of the sinusoid positions added to it and the encoder's first
    layers saw mostly where a row is, not what it holds."""
    torch.nn.init.normal_(model.language_model.embed_tokens.weight, std=0.02)
    encoder = model.audio_encoder
    for conv in (encoder.conv1, encoder.conv2, encoder.conv3):
        torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
        torch.nn.init.zeros_(conv.bias)
    torch.nn.init.normal_(encoder.stem_proj.weight, std=encoder.stem_proj.in_features ** -0.5)
    torch.nn.init.zeros_(encoder.stem_proj.bias)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--encoder-steps", type=int, default=5000, help="steps of the encoder phase (CTC alone)")
    parser.add_argument("--steps", type=int, default=7500, help="steps of the joint phase")
    parser.add_argument("--batch-size", type=int, default=12)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--voices", type=int, default=1500)
    parser.add_argument("--sentences-per-voice", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--save-every", type=int, default=250)
    parser.add_argument("--stop-after", type=int, help="stop after this step (counting both phases), its state saved")
    parser.add_argument("--weights-out", type=Path, help="write the compact weights here when done")
    parser.add_argument("--export-only", action="store_true",
                        help="write --weights-out from the saved training state, do not train")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(args.work_dir, args.seed, args.batch_size, args.steps, args.lr, args.encoder_steps)
    if trainer.load_state():
        print(f"resumed at step {trainer.step}", flush=True)
    if not args.export_only:
        trainer.load_or_build_bank(args.voices, args.sentences_per_voice, args.seed)
        print(f"front end max |diff| vs runtime: {trainer.check_front_end():.2e}; vocabulary "
              f"{len(trainer.vocab.ids)} ids; {sum(p.numel() for p in trainer.model.parameters()) / 1e6:.2f} M "
              "trained parameters", flush=True)
        trainer.train(args.log_every, args.save_every, args.stop_after)
        if trainer.step < trainer.steps:
            print(f"stopped after step {trainer.step} of {trainer.steps}; its state is in {args.work_dir}", flush=True)
            return 0
    if args.weights_out:
        trainer.save_weights(args.weights_out)
        print(f"weights written to {args.weights_out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
