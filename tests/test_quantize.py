"""`moss-edge quantize`: quantized bundles load and generate, shrink what they quantize, and
carry a fidelity report whose numbers this file recomputes from the two bundles.

The tiny fixtures are 64-96 wide, narrower than a k-quant row (256), so llama.cpp falls back
to other types for them; the `w256` model below has 256-wide rows to exercise real k-quants.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import onnx
import pytest

import moss_audio_edge.quantize.bundle_quant as bundle_quant
from edge_runtime.bundle import Bundle, BundleError, load_bundle
from edge_runtime.cli import build_parser, main
from edge_runtime.errors import InputError
from edge_runtime.features import SAMPLE_RATE
from edge_runtime.transcribe import MossAudio
from moss_audio_edge.export.bundle_export import export_bundle
from moss_audio_edge.export.checkpoint_writer import config_with
from moss_audio_edge.quantize.bundle_quant import quantize_bundle
from moss_audio_edge.quantize.fidelity import CONTINUATION_TOKENS, probe_signals
from moss_audio_edge.quantize.gguf_quant import EMBEDDING_TYPES
from moss_audio_edge.quantize.onnx_quant import quantize_encoder, weight_matmuls
from moss_audio_edge.quantize.presets import ENCODER_TYPES, INT8_LAYOUTS, LLM_TYPES, PRESETS, resolve
from tests.fixtures.checkpoints import write_random_checkpoint

THREADS = 2
# Every encoder type and every LLM type, six bundles in all (a full product would be 24).
COMBINATIONS = [("fp32", "F16"), ("fp16", "Q8_0"), ("int8", "Q6_K"), ("int4", "Q5_K_M"),
                ("int8", "Q4_K_M"), ("int4", "Q4_0")]
MIN_SHRINK = {"int8": 3.0, "int4": 5.0}


def quiet(_: str) -> None:
    pass


def directory_state(path: Path) -> dict[str, tuple[int, str]]:
    """Every file's mtime and hash, and the directory's own mtime, which any file created and
    deleted there in the meantime (a quantizer's scratch copy) would have moved."""
    return {".": (path.stat().st_mtime_ns, ""),
            **{p.name: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
               for p in sorted(path.iterdir())}}


@pytest.fixture(scope="module")
def source(tiny_bundles: dict[str, Path]) -> Path:
    return tiny_bundles["k2"]


@pytest.fixture(scope="module")
def source_state(source: Path) -> dict[str, tuple[int, str]]:
    return directory_state(source)


@pytest.fixture(scope="module")
def quantized(source: Path, source_state, tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    root = tmp_path_factory.mktemp("quantized")
    return {(enc, llm): quantize_bundle(source, root / f"{enc}-{llm}", encoder=enc, llm=llm, threads=THREADS,
                                        log=quiet)
            for enc, llm in COMBINATIONS}


def test_combinations_cover_every_choice():
    assert {e for e, _ in COMBINATIONS} == set(ENCODER_TYPES)
    assert {q for _, q in COMBINATIONS} == set(LLM_TYPES)


@pytest.mark.parametrize("combination", COMBINATIONS, ids=lambda c: "-".join(c))
def test_every_choice_loads_and_generates(quantized, combination, speech: np.ndarray):
    out = quantized[combination]
    bundle = load_bundle(out, verify_hashes=True)  # hashes of the new files were updated
    m = bundle.manifest
    assert (m.encoder.dtype, m.llm.dtype) == combination
    assert (m.quantization["encoder"], m.quantization["llm"]) == combination
    model = MossAudio(out, threads=THREADS, n_ctx=512)
    result = model.generate(speech[: 5 * SAMPLE_RATE], "Transcribe the audio.", max_tokens=6)
    assert result.audio_tokens == 63 and len(result.token_ids) >= 1
    assert sorted(p.name for p in out.iterdir()) == sorted(["manifest.json", m.encoder.path, m.llm.path,
                                                            *m.encoder.extra_files])


def test_input_bundle_is_untouched_and_no_staging_is_left(quantized, source: Path, source_state):
    assert directory_state(source) == source_state
    root = next(iter(quantized.values())).parent
    assert not [p for p in root.iterdir() if p.name.startswith(".")]


def weight_bytes(tensors) -> int:
    return sum(int(np.prod(t.dims)) * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
               for t in tensors)


@pytest.mark.parametrize("combination", [c for c in COMBINATIONS if c[0] in MIN_SHRINK], ids=lambda c: "-".join(c))
def test_quantized_matrices_shrink(quantized, source: Path, combination):
    """Measured here from the two ONNX files: the initializers the quantizer replaced (they are
    exactly the MatMul weight matrices) against those it put in their place."""
    before = onnx.load(str(source / "encoder.onnx"))
    after = onnx.load(str(quantized[combination] / "encoder.onnx"))
    old = {t.name: t for t in before.graph.initializer}
    new = {t.name: t for t in after.graph.initializer}
    matmul_weights = {n.input[1] for n in before.graph.node if n.op_type == "MatMul" and n.input[1] in old}
    conv_weights = {n.input[1] for n in before.graph.node if n.op_type == "Conv"}
    assert old.keys() - new.keys() == matmul_weights
    assert conv_weights <= new.keys()  # the stem convolutions stay float
    ratio = weight_bytes(old[n] for n in matmul_weights) / weight_bytes(new[n] for n in new.keys() - old.keys())
    recipe = load_bundle(quantized[combination]).manifest.quantization["encoder_recipe"]
    print(f"{combination[0]}: quantized matrices {ratio:.2f}x smaller")
    assert ratio >= MIN_SHRINK[combination[0]]
    assert recipe["matrices_fp32_bytes"] / recipe["matrices_quantized_bytes"] == pytest.approx(ratio)


@pytest.mark.parametrize("layout", list(INT8_LAYOUTS))
def test_int8_recipe_through_optimum(source: Path, tmp_path: Path, layout: str):
    """optimum's preset for each layout, held to the measured recipe: every MatMul with a
    constant weight becomes MatMulInteger on u8 activations quantized at run time and s8
    symmetric per-output-channel weights, 7-bit on avx2; attention-score MatMuls and the stem
    Convs stay float, and nothing of optimum's (ort_config.json) lands in the bundle."""
    spec = INT8_LAYOUTS[layout]
    before = onnx.load(str(source / "encoder.onnx"))
    recipe = quantize_encoder(source, ["encoder.onnx"], tmp_path, "int8", spec).recipe
    assert [p.name for p in tmp_path.iterdir()] == ["encoder.onnx"]
    assert spec.optimum_preset in recipe["quantizer"] and recipe["reduce_range"] == spec.reduce_range
    after = onnx.load(str(tmp_path / "encoder.onnx"))
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in after.graph.initializer}
    producer = {out: node for node in after.graph.node for out in node.output}
    integer = [n for n in after.graph.node if n.op_type == "MatMulInteger"]
    assert len(integer) == len(weight_matmuls(before)) > 0
    limit = 64 if spec.reduce_range else 127
    for node in integer:
        activation, weight, _, weight_zero = node.input
        assert producer[activation].op_type == "DynamicQuantizeLinear"  # u8, scaled per run
        w = weights[weight]
        assert w.dtype == np.int8 and weights[weight_zero].shape == (w.shape[1],)
        assert not weights[weight_zero].any()  # symmetric
        assert (np.abs(w).max(axis=0) == limit).all()  # each output channel scaled to its own range
    float_matmuls = {n.name for n in before.graph.node if n.op_type == "MatMul"} - weight_matmuls(before).keys()
    assert {n.name for n in after.graph.node if n.op_type == "MatMul"} == float_matmuls
    convs = [n for n in before.graph.node if n.op_type == "Conv"]
    assert len(convs) == 3 and [n for n in after.graph.node if "Conv" in n.op_type] == convs


def test_llm_types_recorded_as_read_back(quantized):
    for out in (quantized[("int8", "Q4_K_M")], quantized[("int8", "Q6_K")]):  # both fell back
        recipe = load_bundle(out).manifest.quantization["llm_recipe"]
        reader = gguf.GGUFReader(str(out / "llm.gguf"))
        counts: dict[str, int] = {}
        for tensor in reader.tensors:
            counts[tensor.tensor_type.name] = counts.get(tensor.tensor_type.name, 0) + 1
        assert recipe["tensor_types"] == counts


# --- the report, recomputed ---------------------------------------------------------------

def open_for_fidelity(path: Path) -> MossAudio:
    return MossAudio(path, threads=THREADS, n_ctx=1024, kv_type="f32", flash_attention="off")


def forced_logits(model: MossAudio, rows: np.ndarray, instruction: str, continuation: list[int]) -> np.ndarray:
    """The next-token logits before each continuation token, in one fresh prefill."""
    sequence = model.prefill(rows, instruction)
    return np.vstack([sequence.logits(), sequence.eval_tokens(continuation[:-1], logits_from=0)])


def softmax64(x: np.ndarray) -> np.ndarray:
    e = np.exp(x.astype(np.float64) - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("combination", [("int4", "Q4_0"), ("int8", "Q6_K")], ids=lambda c: "-".join(c))
def test_report_numbers_are_what_the_bundles_give(quantized, source: Path, combination):
    report = load_bundle(quantized[combination]).manifest.parity["fidelity"]
    ref, got = open_for_fidelity(source), open_for_fidelity(quantized[combination])
    probes = probe_signals()
    assert sorted(report["encoder"]) == sorted(p.name for p in probes) and "speech" in report["encoder"]
    for probe in probes:
        a, b = ref.engine.encode(probe.samples), got.engine.encode(probe.samples)
        cosines = np.sum(a * b, axis=1) / np.sqrt(np.sum(a * a, axis=1) * np.sum(b * b, axis=1))
        stated = report["encoder"][probe.name]
        assert stated["cosine_mean"] == pytest.approx(cosines.mean(), rel=1e-5)
        assert stated["cosine_min"] == pytest.approx(cosines.min(), rel=1e-5)
        assert stated["rel_error"] == pytest.approx(np.sqrt(np.sum((a - b) ** 2) / np.sum(a * a)), rel=1e-4)
        if probe.instruction is None:
            continue
        continuation = list(ref.prefill(a, probe.instruction).decode(CONTINUATION_TOKENS, stop_ids=()))
        p = softmax64(forced_logits(ref, a, probe.instruction, continuation))
        for part, rows in (("llm", a), ("end_to_end", b)):
            q = softmax64(forced_logits(got, rows, probe.instruction, continuation))
            kl = np.sum(p * (np.log(p) - np.log(q)), axis=1)
            stated = report[part][probe.name]
            print(f"{combination} {part} {probe.name}: top-1 {np.mean(p.argmax(1) == q.argmax(1)):.3f} "
                  f"KL {kl.mean():.4f} (stated {stated['top1_agreement']:.3f} / {stated['mean_kl']:.4f})")
            assert stated["mean_kl"] == pytest.approx(kl.mean(), rel=1e-3)
            assert stated["top1_agreement"] == pytest.approx(np.mean(p.argmax(1) == q.argmax(1)),
                                                             abs=1 / CONTINUATION_TOKENS)
    sizes = report["sizes"]["quantized"]
    m = load_bundle(quantized[combination]).manifest
    assert sizes["encoder_bytes"] == sum((quantized[combination] / f).stat().st_size
                                         for f in (m.encoder.path, *m.encoder.extra_files))
    assert sizes["llm_bytes"] == (quantized[combination] / m.llm.path).stat().st_size
    assert report["memory"]["peak_rss_bytes"] > sizes["llm_bytes"]


def test_unchanged_llm_reports_no_llm_difference(quantized):
    """Control: F32 -> F16 changes the LLM a little; an fp32 encoder copy changes no row."""
    report = load_bundle(quantized[("fp32", "F16")]).manifest.parity["fidelity"]
    for stated in report["encoder"].values():
        assert stated["rel_error"] == 0.0 and stated["cosine_min"] == pytest.approx(1.0)
    for stated in report["llm"].values():
        assert stated["top1_agreement"] == 1.0 and stated["mean_kl"] < 1e-4


# --- k-quants on rows of 256 ----------------------------------------------------------------

W256_CONFIG = config_with(
    audio=dict(d_model=64, output_dim=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128,
               downsample_hidden_size=8, deepstack_encoder_layer_indexes=[0]),
    language=dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, head_dim=128),
    adapter_hidden_size=128, deepstack_num_inject_layers=1)


def test_q4_k_m_on_256_wide_rows_uses_k_quants(tmp_path: Path, speech: np.ndarray):
    checkpoint = write_random_checkpoint(tmp_path / "checkpoint", W256_CONFIG, seed=3)
    source = export_bundle(checkpoint, tmp_path / "w256", llm_type="F16", log=quiet)
    out = quantize_bundle(source, tmp_path / "w256-q4", encoder="int4", llm="Q4_K_M", threads=THREADS, log=quiet)
    types = load_bundle(out).manifest.quantization["llm_recipe"]["tensor_types"]
    assert types.get("Q4_K", 0) > 0 and types.get("Q6_K", 0) > 0  # llama.cpp's Q4_K_M mix
    result = MossAudio(out, threads=THREADS, n_ctx=512).generate(speech[: 4 * SAMPLE_RATE], "Transcribe the audio.",
                                                                 max_tokens=4)
    assert len(result.token_ids) >= 1


def test_token_embedding_type_overrides_the_preset(source: Path, tmp_path: Path, speech: np.ndarray):
    assert load_bundle(source).manifest.llm.dtype == "F32"
    out = quantize_bundle(source, tmp_path / "q8-embd-q4", encoder="fp32", llm="Q8_0", embedding_type="Q4_0",
                          threads=THREADS, log=quiet)
    recipe = load_bundle(out).manifest.quantization["llm_recipe"]
    assert recipe["token_embd"] == "Q4_0" and recipe["tensor_types"]["Q8_0"] > 0
    result = MossAudio(out, threads=THREADS, n_ctx=512).generate(speech[: 4 * SAMPLE_RATE], "Transcribe the audio.",
                                                                 max_tokens=4)
    assert len(result.token_ids) >= 1
    with pytest.raises(ValueError, match="token embedding type"):
        quantize_bundle(source, tmp_path / "bad", encoder="fp32", llm="Q8_0", embedding_type="Q2_K", log=quiet)


# --- refusals, interruption, the command line -----------------------------------------------

def test_interrupted_run_leaves_nothing(source: Path, tmp_path: Path, monkeypatch):
    def half_written(src, path: Path, *args, **kwargs):
        path.write_bytes(b"GGUF" + bytes(100))
        raise KeyboardInterrupt

    monkeypatch.setattr(bundle_quant, "quantize_gguf", half_written)
    with pytest.raises(KeyboardInterrupt):
        quantize_bundle(source, tmp_path / "out", encoder="int8", llm="Q8_0", log=quiet)
    assert list(tmp_path.iterdir()) == []


def test_refuses_a_quantized_input_and_an_output_inside_the_input(quantized, source: Path, tmp_path: Path):
    with pytest.raises(BundleError, match="float bundle"):
        quantize_bundle(quantized[("int8", "Q6_K")], tmp_path / "again", log=quiet)
    with pytest.raises(InputError, match="inside the input bundle"):
        quantize_bundle(source, source / "q", log=quiet)
    assert not (source / "q").exists() and not list(tmp_path.iterdir())


def test_presets_and_overrides():
    assert resolve("pi5").runtime() == {"device": "cpu", "threads": 4, "gpu_layers": None}
    custom = resolve("jetson", llm="Q8_0", threads=4)
    assert (custom.encoder, custom.llm, custom.threads, custom.device) == ("fp16", "Q8_0", 4, "cuda")
    assert INT8_LAYOUTS[resolve("x86").int8_layout].reduce_range is True  # 7-bit weights: safe on AVX2
    with pytest.raises(ValueError, match="unknown target"):
        resolve("pi4")
    with pytest.raises(ValueError, match="device"):
        resolve(None, device="tpu")


def test_cli_choices_match_the_quantize_package():
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    quantize = commands.choices["quantize"]
    choices = {a.dest: a.choices for a in quantize._actions if a.choices}
    assert choices == {"target": list(PRESETS), "encoder": list(ENCODER_TYPES), "llm": list(LLM_TYPES),
                       "int8_layout": list(INT8_LAYOUTS), "token_embedding_type": list(EMBEDDING_TYPES)}


def test_cli_target_preset_and_runtime_commands(source: Path, tmp_path: Path, speech_wav: Path, capsys):
    out = tmp_path / "pi5"
    assert main(["quantize", str(source), str(out), "--target", "pi5", "--threads", str(THREADS)]) == 0
    printed = capsys.readouterr()
    assert "encoder rows, speech" in printed.out and "top-1 agreement" in printed.out
    assert "LLM F32 -> Q4_K_M" in printed.err  # progress goes to stderr
    m = load_bundle(out).manifest
    assert (m.encoder.dtype, m.llm.dtype, m.quantization["target"]) == ("int8", "Q4_K_M", "pi5")
    assert m.quantization["runtime"] == PRESETS["pi5"].runtime()
    assert m.quantization["encoder_recipe"]["layout"] == "arm64"
    assert main(["info", str(out), "--verify"]) == 0
    assert json.loads(capsys.readouterr().out)["quantization"]["target"] == "pi5"
    assert main(["run", str(out), "--audio", str(speech_wav), "--max-tokens", "3", "--json",
                 "--threads", str(THREADS)]) == 0
    assert len(json.loads(capsys.readouterr().out)["token_ids"]) >= 1
    assert main(["transcribe", str(out), str(speech_wav), "--timestamps", "none", "--max-tokens", "3",
                 "--threads", str(THREADS), "--quiet"]) == 0


def test_runtime_takes_its_defaults_from_the_preset(quantized):
    bundle = load_bundle(quantized[("int8", "Q6_K")])
    hinted = Bundle(bundle.directory, dataclasses.replace(bundle.manifest, quantization={
        **bundle.manifest.quantization, "runtime": {"device": "cuda", "threads": 1, "gpu_layers": None}}))
    assert MossAudio(hinted, n_ctx=256).device.device == "cuda"  # asked for; falls back to the CPU here
    assert MossAudio(hinted, device="cpu", n_ctx=256).device.device == "cpu"  # an argument wins


BLOCK_QUANTIZE_EXTRA = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("onnx", "gguf"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
sys.meta_path.insert(0, Block())
from edge_runtime.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_without_the_quantize_extra_the_cli_names_it(source: Path, tmp_path: Path):
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-c", BLOCK_QUANTIZE_EXTRA, "quantize", str(source), str(out)],
                            capture_output=True, text=True)
    assert result.returncode == 4, result.stderr
    assert "moss-audio-edge[quantize]" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()
