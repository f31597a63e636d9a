"""The engine: the one owner of a llama.cpp context and of the ONNX encoder session.

Everything users call (`transcribe`, `ask`, `stream`, the server) and the quantize fidelity
report and benchmarks drive the model through this floor; nothing else touches llama.cpp's
context or onnxruntime. It offers what those callers are made of:

- encode audio (a whole clip, or one mel chunk at a time for live audio);
- `start()` a `Sequence`: the context's KV cache, handed to one user at a time, that prefills
  prompt pieces (token runs and audio rows, see docs/format.md#llama-cpp-positions), appends
  audio, decodes (greedy, sampled or forced), and evaluates a readout and removes it again;
- `start_group(n)`: n sequences in the one context (`parallel=n`), prefilled one by one and
  decoded together, one token of each per llama.cpp batch (`decode_together`).

Each start says how many positions its sequences will take (prompt plus output budget): an
automatic context (`n_ctx=None`) is sized to that, so memory follows the work (llm.py).

The context has one owner at a time. `start()`/`start_group()` hand it over and every older
Sequence goes stale: using one raises `ContextTaken` instead of decoding on a cache someone
else changed (e.g. a half-consumed `ask_stream` iterated after another call on the model).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence as Ids

import numpy as np

from .bundle import GGUF_MODEL_TYPE_KEY, Bundle, BundleError
from .encoder import AudioEncoder
from .errors import ContextTaken, InputError
from .features import log_mel_spectrogram
from .llm import LlamaModel
from .loop_guard import LoopGuard
from .prompt import Audio, Piece, Tokens, prompt_length


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen: greedy at temperature 0, else temperature, top-k, top-p."""
    temperature: float = 0.0
    top_k: int = 50
    top_p: float = 1.0
    seed: int | None = None


GREEDY = Sampling()


def choose_token(logits: np.ndarray, sampling: Sampling, rng: np.random.Generator) -> int:
    if sampling.temperature <= 0:
        return int(np.argmax(logits))
    k = min(sampling.top_k, len(logits)) if sampling.top_k > 0 else len(logits)
    candidates = np.argpartition(-logits, k - 1)[:k]
    scaled = logits[candidates].astype(np.float64) / sampling.temperature
    order = np.argsort(-scaled)
    candidates, scaled = candidates[order], scaled[order]
    probs = np.exp(scaled - scaled[0])
    probs /= probs.sum()
    if sampling.top_p < 1.0:
        keep = int(np.searchsorted(np.cumsum(probs), sampling.top_p) + 1)
        candidates, probs = candidates[:keep], probs[:keep] / probs[:keep].sum()
    return int(rng.choice(candidates, p=probs))


def scripted(script: Ids[int], position: int, stop_ids: Ids[int]) -> int:
    """Forced output (benchmarks, docs/benchmarks.md#forced-output): the script's token at
    `position`, then the first stop id."""
    return script[position] if position < len(script) else stop_ids[0]


@dataclass(frozen=True)
class Readout:
    tokens: list[int]  # greedy text after the audio, stop token excluded
    draft_tokens: int  # tokens of the draft checked
    accepted_tokens: int  # of those, the ones the model confirmed
    decoded_tokens: int  # tokens decoded one at a time after the draft
    looped: bool = False  # the loop guard stopped it (its loop is trimmed from `tokens`)


@dataclass(frozen=True)
class SavedSequence:
    state: bytes  # llama.cpp's copy of the sequence's KV cells
    n_past: int


class Engine:
    """A bundle's encoder and LLM, loaded once. `providers` (onnxruntime's) and `gpu_layers`
    come from the caller's device plan (device.py); `parallel` is how many sequences the one
    llama.cpp context holds at once."""

    def __init__(self, bundle: Bundle, providers: list[str], gpu_layers: int, threads: int | None = None,
                 n_ctx: int | None = None, kv_type: str = "f16", flash_attention: str = "auto",
                 parallel: int = 1, n_batch: int | None = None):
        if parallel < 1:
            raise InputError(f"parallel={parallel}: at least one sequence")
        self.bundle = bundle
        m = bundle.manifest
        self.manifest = m
        self.encoder = AudioEncoder(bundle.encoder_path, m.audio, m.model.row_width,
                                    providers=providers, threads=threads)
        self._llm = LlamaModel(bundle.llm_path, n_ctx=n_ctx, n_batch=n_batch, threads=threads, gpu_layers=gpu_layers,
                               kv_type=kv_type, flash_attention=flash_attention, n_seq=parallel)
        # Equal row widths do not prove matching files: hidden * (1 + K) can coincide
        if self._llm.n_embd != m.model.hidden_size:
            raise BundleError(f"{bundle.llm_path}: LLM hidden size is {self._llm.n_embd}, the "
                              f"manifest says {m.model.hidden_size} (mismatched files)")
        if self._llm.n_embd_inp != m.model.row_width:
            raise BundleError(f"{bundle.llm_path}: takes rows of {self._llm.n_embd_inp} floats, the "
                              f"manifest's encoder gives {m.model.row_width} (mismatched files)")
        gguf_type = self._llm.metadata(GGUF_MODEL_TYPE_KEY)
        if gguf_type != m.model.model_type:
            raise BundleError(f"{bundle.llm_path}: GGUF model type {gguf_type!r} does not match "
                              f"the manifest's {m.model.model_type!r}")
        self._owners: list[Sequence] = []  # who holds the context now
        self._starts = 0

    # --- vocabulary (no context state) ---------------------------------------------------

    @property
    def n_ctx(self) -> int:
        """Tokens the context holds now (an automatic one grows as calls need)."""
        return self._llm.n_ctx

    @property
    def max_context(self) -> int:
        """The most tokens one start may ask for: a fixed n_ctx, or what the model was trained for."""
        return self._llm.n_ctx if self._llm.fixed_ctx else self._llm.n_ctx_train

    @property
    def n_vocab(self) -> int:
        return self._llm.n_vocab

    @property
    def llm_path(self) -> Path:
        return self.bundle.llm_path

    def tokenize(self, text: str) -> list[int]:
        return self._llm.tokenize(text)

    def token_bytes(self, token: int) -> bytes:
        return self._llm.token_bytes(token)

    def detokenize(self, tokens: Ids[int]) -> str:
        return self._llm.detokenize(tokens)

    def metadata(self, key: str) -> str | None:
        return self._llm.metadata(key)

    # --- audio ----------------------------------------------------------------------------

    def encode(self, samples: np.ndarray) -> np.ndarray:
        """16 kHz mono float32 samples -> encoder rows [N, row_width]."""
        return self.encoder.encode(log_mel_spectrogram(samples))

    def encode_chunk(self, mel: np.ndarray, width: int) -> np.ndarray:
        """One mel chunk [n_mels, T] zero-padded to `width` frames -> its valid rows."""
        batch = np.zeros((1, mel.shape[0], width), dtype=np.float32)
        batch[0, :, :mel.shape[1]] = mel
        return self.encoder.encode_chunks(batch, np.array([mel.shape[1]], dtype=np.int64))[0]

    # --- the context ----------------------------------------------------------------------

    @property
    def n_seq(self) -> int:
        """How many sequences the context holds at once (`parallel`)."""
        return self._llm.n_seq

    def start(self, pieces: list[Piece] = (), rows: np.ndarray | None = None, room: int = 0) -> Sequence:
        """Take the context for a new Sequence (any older one goes stale), clear it and
        evaluate `pieces` (audio pieces take their rows from `rows`); `room`: the positions
        it will take after them (the output budget)."""
        sequence = self.start_group(1, prompt_length(pieces) + room)[0]
        sequence.prefill(pieces, rows)
        return sequence

    def start_group(self, n: int, positions_each: int = 0) -> list[Sequence]:
        """Take the context for `n` empty sequences of up to `positions_each` positions that
        share it (any older one goes stale): each prefills on its own, and `decode_together`
        decodes them in one batch per step."""
        if not 1 <= n <= self.n_seq:
            raise ValueError(f"{n} sequences asked for; this context holds 1 to {self.n_seq} (parallel=)")
        self._starts += 1
        self._owners = []  # a context made anew by reserve() holds nobody's cache
        self._llm.reserve(n * positions_each)
        self._llm.clear()
        self._owners = [Sequence(self, self._starts, seq) for seq in range(n)]
        return list(self._owners)

    def owns(self, sequence: Sequence) -> bool:
        return any(sequence is owner for owner in self._owners)

    def decode_together(self, sequences: list[Sequence], max_tokens: int | list[int], stop_ids: Ids[int],
                        sampling: Sampling = GREEDY, guards: list[LoopGuard | None] | None = None,
                        scripts: list[Ids[int] | None] | None = None) -> list[list[int]]:
        """What `decode` gives each sequence, computed together: every step evaluates one
        token of each unfinished sequence in one llama.cpp batch. Each sequence samples with
        its own generator seeded by `sampling.seed`, stops at its own loop guard and follows
        its own script, as it would alone."""
        budgets = max_tokens if isinstance(max_tokens, list) else [max_tokens] * len(sequences)
        guards = guards or [None] * len(sequences)
        scripts = scripts or [None] * len(sequences)
        rngs = [np.random.default_rng(sampling.seed) for _ in sequences]
        stops = set(stop_ids)
        out: list[list[int]] = [[] for _ in sequences]
        live = list(range(len(sequences)))
        while live:
            stepping = []
            for i in live:
                if len(out[i]) >= budgets[i]:
                    continue
                logits = sequences[i].logits()
                token = (scripted(scripts[i], len(out[i]), stop_ids) if scripts[i] is not None
                         else choose_token(logits, sampling, rngs[i]))
                if token not in stops:
                    out[i].append(token)
                    if not (guards[i] and guards[i].add(token)):
                        stepping.append(i)
            live = [i for i in stepping if len(out[i]) < budgets[i]]  # the last token needs no logits
            if live:
                self._step([sequences[i] for i in live], [out[i][-1] for i in live])
        return out

    def _step(self, sequences: list[Sequence], tokens: list[int]) -> None:
        for sequence in sequences:
            sequence._llm  # raises ContextTaken for a stale one
        logits = self._llm.eval_step(tokens, [s.n_past for s in sequences], [s.seq for s in sequences])
        for sequence, row in zip(sequences, logits):
            sequence._advance(1, row)

    def close(self) -> None:
        self._owners = []
        self._llm.close()


class Sequence:
    """One user's hold on (a sequence of) the engine's context: its KV cache cells, position
    counter and latest logits."""

    def __init__(self, engine: Engine, number: int, seq: int):
        self._engine = engine
        self._number = number
        self.seq = seq  # llama.cpp's sequence id
        self.n_past = 0  # positions evaluated so far
        self._logits: np.ndarray | None = None

    @property
    def _llm(self) -> LlamaModel:
        if not self._engine.owns(self):
            raise ContextTaken(
                f"this generation (call {self._number} on the model) was interrupted: call "
                f"{self._engine._starts} has since taken the model's context. Consume a stream "
                "before the next call on the same model, or close it")
        return self._engine._llm

    def _advance(self, n: int, logits: np.ndarray) -> None:
        self.n_past += n
        self._logits = logits

    def prefill(self, pieces: list[Piece], rows: np.ndarray | None = None) -> None:
        """Feed the pieces in order. With audio among them, the token runs go in as their
        embedding rows, so that audio, time markers and text share full batches: a marker's one
        or two tokens in a batch of their own cost a pass over all the weights
        (docs/format.md#packed-prefill). Otherwise, or where the GGUF's token embedding cannot
        be read, token runs are token batches and audio runs embedding batches."""
        llm = self._llm
        packed = self._packed_rows(llm, pieces, rows)
        if packed is not None:
            self._advance(len(packed), llm.eval_embeddings(packed, self.n_past, self.seq))
            return
        for piece in pieces:
            if isinstance(piece, Tokens):
                self._advance(len(piece.ids), llm.eval_tokens(piece.ids, self.n_past, self.seq))
            else:
                self._advance(piece.count, llm.eval_embeddings(rows[piece.start:piece.start + piece.count],
                                                               self.n_past, self.seq))

    @staticmethod
    def _packed_rows(llm: LlamaModel, pieces: list[Piece], rows: np.ndarray | None) -> np.ndarray | None:
        if not any(isinstance(piece, Audio) for piece in pieces):
            return None
        parts = []
        for piece in pieces:
            if isinstance(piece, Tokens):
                token_rows = llm.token_rows(piece.ids)
                if token_rows is None:
                    return None
                parts.append(token_rows)
            else:
                parts.append(rows[piece.start:piece.start + piece.count])
        return np.concatenate(parts)

    def eval_tokens(self, tokens: Ids[int], logits_from: int | None = None) -> np.ndarray | None:
        """Append tokens; with `logits_from`, the logits after each of tokens[logits_from:]
        [n - logits_from, n_vocab]."""
        logits = self._llm.eval_tokens(tokens, self.n_past, self.seq, logits_from)
        self._advance(len(tokens), logits if logits_from is None else logits[-1])
        return None if logits_from is None else logits

    def logits(self) -> np.ndarray:
        """The next-token logits after the last evaluated position."""
        self._llm  # a stale sequence has none to give
        if self._logits is None:
            raise ValueError("nothing evaluated since the last truncate: no logits to give")
        return self._logits

    def save(self) -> SavedSequence:
        """A copy of this sequence's KV cache, to `restore` after others have used the context."""
        return SavedSequence(self._llm.seq_state(self.seq), self.n_past)

    def restore(self, saved: SavedSequence) -> None:
        """Make this (empty) sequence what `saved` was: the same cache to the bit. It has no
        logits until something is evaluated after it."""
        if self.n_past:
            raise ValueError("restore() needs a fresh sequence")
        self._llm.load_seq_state(self.seq, saved.state)
        self.n_past, self._logits = saved.n_past, None

    def truncate(self, n_keep: int) -> None:
        """Forget every position from `n_keep` on."""
        self._llm.remove(self.seq, n_keep)
        if n_keep < self.n_past:
            self.n_past, self._logits = n_keep, None

    def decode(self, max_tokens: int, stop_ids: Ids[int], sampling: Sampling = GREEDY,
               guard: LoopGuard | None = None, script: Ids[int] | None = None) -> Iterator[int]:
        """Tokens after what was evaluated, until a stop id (not yielded), the budget, or the
        loop `guard` tripping (the looping tokens are yielded: `guard.kept` trims them). A
        token is evaluated only when the next one is asked for, so a caller may stop and
        evaluate something else in its place (a forced `</think>`). A `script` is decoded
        instead of what the logits say, then a stop: every step is still computed."""
        rng = np.random.default_rng(sampling.seed)
        stops = set(stop_ids)
        for i in range(max_tokens):
            logits = self.logits()
            token = scripted(script, i, stop_ids) if script is not None else choose_token(logits, sampling, rng)
            if token in stops:
                return
            yield token
            if guard and guard.add(token):
                return
            self.eval_tokens([token])

    def readout(self, tail: Ids[int], budget: int, stop_ids: Ids[int], draft: Ids[int] = (),
                guard: LoopGuard | None = None, script: Ids[int] | None = None) -> Readout:
        """Evaluate `tail` (an instruction suffix) after the current positions, decode greedily
        and remove all of it again: the cache ends as it began. A `draft` (the previous
        readout) is verified in one batch; its agreeing prefix is kept, which gives the tokens
        plain greedy decoding would. A tripped loop `guard` ends it, its loop trimmed. A
        `script` stands in for the greedy choices, as in `decode`."""
        start, logits_before = self.n_past, self._logits
        stops = set(stop_ids)
        draft = list(draft[:budget])
        tokens: list[int] = []
        accepted = decoded = 0

        def pick(logits: np.ndarray, position: int) -> int:
            return scripted(script, position, stop_ids) if script is not None else int(np.argmax(logits))

        try:
            if draft:
                logits = self.eval_tokens([*tail, *draft], logits_from=len(tail) - 1)
                predicted = [pick(row, position) for position, row in enumerate(logits)]
                while accepted < len(draft) and predicted[accepted] == draft[accepted]:
                    accepted += 1
                tokens = draft[:accepted]
                self.truncate(start + len(tail) + accepted)
                following = predicted[accepted]
            else:
                self.eval_tokens(tail)
                following = pick(self.logits(), 0)
            looping = guard is not None and any(guard.add(token) for token in tokens)
            while not looping and following not in stops and len(tokens) < budget:
                tokens.append(following)
                if guard is not None and guard.add(following):
                    break
                self.eval_tokens([following])
                following = pick(self.logits(), len(tokens))
                decoded += 1
        finally:
            if self._engine.owns(self):
                self.truncate(start)
                self._logits = logits_before
        return Readout(guard.kept(tokens) if guard else tokens, len(draft), accepted, decoded,
                       looped=bool(guard and guard.tripped))
