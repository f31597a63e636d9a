"""The nano model's training script: seeded, and its cheap loss is the exported model's true
full-vocabulary cross-entropy."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from moss_audio_edge.export.checkpoint import Checkpoint
from moss_audio_edge.export.nano import corpus
from moss_audio_edge.export.nano.train import (IM_END, JOINT_ENCODER_LR_SCALE, LENGTH_GROUP_SIZE, NANO_CONFIG, Trainer, boundary_rows, main,
                              torch_log_mel)
from moss_audio_edge.export.nano.weights import WEIGHTS_FILE, save_compact, write_nano_checkpoint
from moss_audio_edge.export.checkpoint import downsampled_length
from moss_audio_edge.export.reference import MossAudioReference, sinusoid_positions

ARGS = ["--encoder-steps", "2", "--steps", "3", "--batch-size", "2", "--voices", "3", "--sentences-per-voice", "4", "--log-every", "1",
        "--threads", "2"]


def train_briefly(work: Path, capsys) -> tuple[list[dict], dict[str, torch.Tensor]]:
    assert main(["--work-dir", str(work), *ARGS, "--weights-out", str(work / "w.safetensors")]) == 0
    logged = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    return logged, load_file(str(work / "w.safetensors"))


def test_training_is_seeded_and_reproducible(tmp_path: Path, capsys):
    first_log, first_weights = train_briefly(tmp_path / "a", capsys)
    second_log, second_weights = train_briefly(tmp_path / "b", capsys)
    assert [(r["step"], r["phase"]) for r in first_log] == [(1, "encoder"), (2, "encoder"), (3, "joint"), (4, "joint"), (5, "joint")]
    assert [(r["loss"], r["ctc"]) for r in first_log] == [(r["loss"], r["ctc"]) for r in second_log]
    assert first_weights.keys() == second_weights.keys()
    assert all(torch.equal(first_weights[k], second_weights[k]) for k in first_weights)  # bit for bit


class Interrupted(Exception):
    pass


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path: Path, capsys, monkeypatch):
    _, uninterrupted = train_briefly(tmp_path / "a", capsys)
    one_step = Trainer.train_step

    def stop_in_the_joint_phase(trainer: Trainer, batch, losses):
        if trainer.step == 3:
            raise Interrupted
        one_step(trainer, batch, losses)

    monkeypatch.setattr(Trainer, "train_step", stop_in_the_joint_phase)
    with pytest.raises(Interrupted):
        main(["--work-dir", str(tmp_path / "b"), *ARGS, "--save-every", "1"])
    monkeypatch.setattr(Trainer, "train_step", one_step)
    capsys.readouterr()
    logged, resumed = train_briefly(tmp_path / "b", capsys)
    assert [r["step"] for r in logged] == [4, 5]
    assert all(torch.equal(uninterrupted[k], resumed[k]) for k in uninterrupted)


def test_an_encoder_phase_stopped_and_resumed_with_another_joint_length_is_a_run_of_that_length(tmp_path: Path, capsys):
    _, uninterrupted = train_briefly(tmp_path / "a", capsys)  # --steps 3
    stopped = tmp_path / "b"
    assert main(["--work-dir", str(stopped), *ARGS, "--steps", "7", "--stop-after", "2",
                 "--weights-out", str(stopped / "w.safetensors")]) == 0
    assert "stopped after step 2 of 9" in capsys.readouterr().out
    assert not (stopped / "w.safetensors").exists()  # no weights from an unfinished run
    logged, resumed = train_briefly(stopped, capsys)
    assert [r["step"] for r in logged] == [3, 4, 5]
    assert all(torch.equal(uninterrupted[k], resumed[k]) for k in uninterrupted)


def test_the_encoder_learns_slower_in_the_joint_phase(tmp_path: Path, capsys, monkeypatch):
    seen: list[tuple[int, float, float]] = []
    one_step = Trainer.train_step

    def record_rates(trainer: Trainer, batch, losses):
        one_step(trainer, batch, losses)
        by_group = {g["encoder"]: g["lr"] for g in trainer.optimizer.param_groups}
        seen.append((trainer.step, by_group[True], by_group[False]))

    monkeypatch.setattr(Trainer, "train_step", record_rates)
    train_briefly(tmp_path, capsys)
    assert [(step, encoder == rest) for step, encoder, rest in seen] == [(1, True), (2, True), (3, False), (4, False), (5, False)]
    assert all(encoder == pytest.approx(rest * JOINT_ENCODER_LR_SCALE) for step, encoder, rest in seen[2:])


def test_the_encoder_phase_holds_its_rate_then_anneals_it_before_the_joint_phase_warms_up(tmp_path: Path):
    trainer = Trainer(tmp_path, seed=0, batch_size=2, steps=1000, lr=1e-3, encoder_steps=1000)
    rates = []
    for step in range(2000):
        trainer.step = step
        rates.append(trainer.learning_rate())
    assert rates[49:800] == [1e-3] * 751  # warmed up, then held
    assert all(a > b for a, b in zip(rates[800:1000], rates[801:1000]))  # annealed
    assert rates[999] == pytest.approx(5e-5, rel=1e-2)  # 5% at the last step
    assert rates[1000] < rates[999] and rates[1299] == pytest.approx(1e-3)  # the joint phase warms up again


def test_compact_loss_is_the_full_vocabulary_cross_entropy(tmp_path: Path):
    """...of the whole padded batch, though training runs it in groups of similar length."""
    trainer = Trainer(tmp_path, seed=1, batch_size=2 * LENGTH_GROUP_SIZE + 1, steps=10, lr=1e-3)
    trainer.load_or_build_bank(2, 3, seed=1)
    with torch.no_grad():  # the checkpoint stores bf16: round first so both sides hold the same numbers
        for p in trainer.model.parameters():
            p.copy_(p.bfloat16().float())
    batch = trainer.batch(step=10)
    assert len(set(batch.sequence_lengths.tolist())) > 2  # three groups of different widths
    with torch.no_grad():
        answer, *_ = trainer.loss(batch)
    save_compact(trainer.model.state_dict(), trainer.vocab.ids, tmp_path / "w.safetensors", {})
    checkpoint = Checkpoint(write_nano_checkpoint(NANO_CONFIG, tmp_path / "ckpt", tmp_path / "w.safetensors",
                                                  tokenizer_cache=tmp_path / "tokenizer-cache"))
    full = MossAudioReference.from_checkpoint(checkpoint).float()
    full_ids = torch.tensor(trainer.vocab.ids)[batch.ids]
    full_labels = torch.where(batch.labels == -100, -100, torch.tensor(trainer.vocab.ids)[batch.labels.clamp_min(0)])
    with torch.no_grad():
        rows = full.audio_rows(batch.chunks, batch.lengths)
        valid = [int(v) for v in downsampled_length(batch.lengths)]
        rows = torch.cat([rows[i, :v] for i, v in enumerate(valid)])
        hidden = full.hidden_states(full_ids, rows)
        logits = hidden[:, :-1] @ full.output_weight().T  # all 151936 ids
        expected = F.cross_entropy(logits.flatten(0, 1), full_labels[:, 1:].flatten(), ignore_index=-100)
    assert float(answer) == pytest.approx(float(expected), rel=1e-4)


def test_rows_are_taught_their_index_in_their_chunk(tmp_path: Path):
    trainer = Trainer(tmp_path, seed=2, batch_size=2, steps=10, lr=1e-3)
    trainer.load_or_build_bank(2, 3, seed=2)
    batch = trainer.batch(step=10)  # clips of several chunks: the index restarts in each
    assert len(batch.chunks) > len(batch.rows_per_clip)
    with torch.no_grad():
        _, _, position, _ = trainer.loss(batch)
        rows = trainer.model.audio_rows(batch.chunks, batch.lengths)[..., : NANO_CONFIG["language_config"]["hidden_size"]]
        per_chunk, counted_on = [], []  # counted_on: numbered through the batch instead
        for chunk, valid in zip(rows, downsampled_length(batch.lengths).tolist()):
            log_p = trainer.position_head(chunk[:valid]).log_softmax(-1)
            per_chunk += [-log_p[i, i] for i in range(valid)]
            counted_on += [-log_p[i, min(len(counted_on) + i, log_p.shape[1] - 1)] for i in range(valid)]
    assert float(position) == pytest.approx(float(torch.stack(per_chunk).mean()), rel=1e-5)
    assert float(position) != pytest.approx(float(torch.stack(counted_on).mean()), rel=1e-3)


def test_rows_in_a_sentence_name_its_start_and_end_rows_where_their_chunk_holds_them():
    sentences = [corpus.Sentence(0.5, 1.3, "call mom"), corpus.Sentence(3.53, 4.6, "stop")]
    first, second = boundary_rows(sentences, 0.0, 50), boundary_rows(sentences, 4.0, 20)
    want_first = torch.full((50, 2), -100)
    want_first[5:18] = torch.tensor([6, 16])  # rows centred within 0.1 s of 0.5-1.3 s; 0.5 s is row 6
    want_first[43:, 0] = 44  # "stop" starts at row 44 of this chunk (its margin reaches row 43) and ends in the next
    want_second = torch.full((20, 2), -100)
    want_second[:9, 1] = 7  # 4.6 s is row 7 of the chunk from 4 s
    assert torch.equal(first, want_first)
    assert torch.equal(second, want_second)


def test_batches_carry_one_boundary_target_per_row_and_clean_timestamp_clips(tmp_path: Path, monkeypatch):
    trainer = Trainer(tmp_path, seed=3, batch_size=6, steps=10, lr=1e-3, encoder_steps=2)
    trainer.load_or_build_bank(2, 3, seed=3)
    composed: list[tuple[corpus.Clip, float]] = []
    compose = corpus.compose_clip

    def record(*args, augment: float):
        clip = compose(*args, augment=augment)
        composed.append((clip, augment))
        return clip

    monkeypatch.setattr(corpus, "compose_clip", record)
    trainer.batch(step=1)  # the encoder phase, its ramp at full strength: no clip is spared
    assert {augment for _, augment in composed} == {1.0}
    composed.clear()
    batch = trainer.batch(step=5)  # the joint phase
    assert len(batch.boundary_rows) == int(batch.rows_per_clip.sum())
    assert (batch.boundary_rows >= 0).any()
    for (clip, augment), labels in zip(composed, batch.labels):
        answer = [trainer.vocab.ids[t] for t in labels[labels != -100]]
        timestamped = answer == trainer.encode(clip.timestamped) + [IM_END]
        assert timestamped or answer == trainer.encode(clip.transcript) + [IM_END]
        assert augment == (0.0 if timestamped else 1.0)
    assert {augment for _, augment in composed} == {0.0, 1.0}
    # CTC targets: each clip's words, one class per word
    targets = batch.ctc_targets.split(batch.ctc_lengths.tolist())
    for (clip, _), target in zip(composed, targets):
        assert [trainer.vocab.words[c] for c in target] == " ".join(s.text for s in clip.sentences).split()
    assert trainer.ctc_head.out_features == len(trainer.vocab.words) + 1 == trainer.ctc_blank + 1


def test_the_grammar_words_are_the_ctc_classes(tmp_path: Path):
    trainer = Trainer(tmp_path, seed=0, batch_size=1, steps=0, lr=0.0)
    grammar = {*corpus.DIGITS, *corpus.NUMBERS, *corpus.DIRECTIONS}
    for phrases in (corpus.ROOMS, corpus.DEVICES, corpus.OPENABLE, corpus.NAMES, corpus.SHORT_COMMANDS):
        grammar.update(w for phrase in phrases for w in phrase.split())
    assert grammar <= set(trainer.vocab.words) and len(trainer.vocab.words) < 120
    assert trainer.vocab.words == sorted(set(trainer.vocab.words))


def test_the_convolution_stem_keeps_the_speech_above_the_positions(tmp_path: Path):
    """The stem's output must vary over a spoken clip on the scale of the sinusoid positions
    added to it (PyTorch's default init left it at ~1% of them)."""
    trainer = Trainer(tmp_path, seed=0, batch_size=1, steps=0, lr=0.0)
    clip = corpus.held_out_clips(1, seed=5, max_seconds=4.0)[0]
    mel = torch_log_mel(clip.audio, trainer.filters, trainer.window)[None]
    with torch.no_grad():
        content = trainer.model.audio_encoder.stem(mel)[0]
    positions = sinusoid_positions(content.shape[0], content.shape[1])
    assert float(content.std(0).mean()) > 0.1 * float(positions.std(0).mean())


def test_a_state_from_an_older_recipe_is_refused_by_name(tmp_path: Path):
    trainer = Trainer(tmp_path, seed=0, batch_size=2, steps=10, lr=1e-3)
    trainer.save_state()
    state = torch.load(tmp_path / "state.pt", weights_only=False)
    del state["boundary_head"]
    torch.save(state, tmp_path / "state.pt")
    with pytest.raises(RuntimeError, match="older recipe without boundary_head"):
        Trainer(tmp_path, seed=0, batch_size=2, steps=10, lr=1e-3).load_state()
    del state["ctc_words"]  # a CTC head over token ids
    state["boundary_head"] = Trainer(tmp_path, seed=0, batch_size=2, steps=10, lr=1e-3).boundary_head.state_dict()
    torch.save(state, tmp_path / "state.pt")
    with pytest.raises(RuntimeError, match="CTC head over other classes"):
        Trainer(tmp_path, seed=0, batch_size=2, steps=10, lr=1e-3).load_state()


def test_shipped_weights_hold_only_the_used_embedding_rows():
    assert WEIGHTS_FILE.is_file()
    from safetensors import safe_open

    with safe_open(str(WEIGHTS_FILE), "pt") as f:
        used = f.get_tensor("nano.used_token_ids")
        embedding = f.get_slice("language_model.embed_tokens.weight").get_shape()
    assert embedding == [len(used), NANO_CONFIG["language_config"]["hidden_size"]] and 100 < len(used) < 1000
