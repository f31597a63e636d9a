"""Add a checkpoint's Qwen byte-level BPE tokenizer to a GGUF, as llama.cpp reads it.

llama.cpp knows this vocabulary as model "gpt2" with pre-tokenizer "qwen2": the token list
holds the byte-level (GPT-2 mapped) strings of vocab.json and the raw text of added tokens,
merges are the lines of merges.txt, and the list is padded to the embedding rows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf

from .checkpoint import CheckpointError


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"tokenizer file missing: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"malformed tokenizer file {path}: {err}") from err


def _read_vocab(path: Path) -> dict[str, int]:
    vocab = _read_json(path)
    if not isinstance(vocab, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and v >= 0 for k, v in vocab.items()
    ):
        raise CheckpointError(f"malformed tokenizer file {path}: expected an object of token -> id")
    return vocab


def _read_merges(path: Path) -> list[str]:
    if not path.is_file():
        raise CheckpointError(f"tokenizer file missing: {path}")
    merges = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line or (number == 1 and line.startswith("#version")):
            continue
        if len(line.split(" ")) != 2:
            raise CheckpointError(f"malformed tokenizer file {path}: line {number} is not 'left right'")
        merges.append(line)
    return merges


def _read_added(config: dict[str, Any], config_path: Path, added_path: Path) -> dict[int, tuple[str, bool]]:
    """Added tokens as id -> (content, special), cross-checked against added_tokens.json."""
    decoder = config.get("added_tokens_decoder")
    if not isinstance(decoder, dict):
        raise CheckpointError(f"malformed tokenizer file {config_path}: no added_tokens_decoder")
    added: dict[int, tuple[str, bool]] = {}
    for key, entry in decoder.items():
        if not (key.isdigit() and isinstance(entry, dict) and isinstance(entry.get("content"), str)):
            raise CheckpointError(f"malformed tokenizer file {config_path}: added token {key!r}")
        added[int(key)] = (entry["content"], bool(entry.get("special", False)))
    ids_by_content = _read_json(added_path)
    if ids_by_content != {content: i for i, (content, _) in added.items()}:
        raise CheckpointError(f"malformed tokenizer file {added_path}: disagrees with {config_path.name}")
    return added


def _token_id(name: Any, ids: dict[str, int], config_path: Path, key: str) -> int:
    content = name.get("content") if isinstance(name, dict) else name
    if content not in ids:
        raise CheckpointError(f"malformed tokenizer file {config_path}: {key} {content!r} is not a token")
    return ids[content]


def _added_type(content: str, special: bool) -> gguf.TokenType:
    # llama.cpp treats <|...|> added tokens (FIM, repo, file_sep) as control tokens even when
    # the tokenizer calls them non-special, and rewrites them with a warning otherwise.
    if special or (content.startswith("<|") and content.endswith("|>")):
        return gguf.TokenType.CONTROL
    return gguf.TokenType.USER_DEFINED


def add_tokenizer(writer: gguf.GGUFWriter, checkpoint_dir: Path, vocab_size: int) -> None:
    """Write the tokenizer of `checkpoint_dir` into `writer`, padded to `vocab_size` tokens."""
    config_path = checkpoint_dir / "tokenizer_config.json"
    config = _read_json(config_path)
    if not isinstance(config, dict):
        raise CheckpointError(f"malformed tokenizer file {config_path}: expected an object")
    vocab = _read_vocab(checkpoint_dir / "vocab.json")
    merges = _read_merges(checkpoint_dir / "merges.txt")
    added = _read_added(config, config_path, checkpoint_dir / "added_tokens.json")
    template_path = checkpoint_dir / "chat_template.jinja"
    if not template_path.is_file():
        raise CheckpointError(f"tokenizer file missing: {template_path}")

    entries: dict[int, tuple[str, gguf.TokenType]] = {
        i: (text, gguf.TokenType.NORMAL) for text, i in vocab.items()
    }
    for i, (content, special) in added.items():
        if i in entries and entries[i][0] != content:
            raise CheckpointError(f"malformed tokenizer file {config_path}: id {i} is also {entries[i][0]!r} in vocab.json")
        entries[i] = (content, _added_type(content, special))
    if max(entries) >= vocab_size:
        raise CheckpointError(f"token id {max(entries)} does not fit vocab_size {vocab_size}")

    # Embedding rows without a token (and any id gap) get unique unused placeholders.
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        text, kind = entries.get(i, (f"[PAD{i}]", gguf.TokenType.UNUSED))
        tokens.append(text)
        types.append(kind)

    ids = {text: i for i, (text, _) in entries.items()}
    eos = _token_id(config.get("eos_token"), ids, config_path, "eos_token")
    pad = _token_id(config.get("pad_token"), ids, config_path, "pad_token")
    bos = _bos_id(config, ids, config_path, checkpoint_dir / "config.json", fallback=pad)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(bos)
    writer.add_eos_token_id(eos)
    writer.add_pad_token_id(pad)
    writer.add_add_bos_token(bool(config.get("add_bos_token", False)))
    writer.add_add_eos_token(bool(config.get("add_eos_token", False)))
    writer.add_chat_template(template_path.read_text(encoding="utf-8"))


def _bos_id(
    config: dict[str, Any], ids: dict[str, int], config_path: Path, model_config_path: Path, fallback: int
) -> int:
    """Qwen has no bos token of its own: tokenizer_config says null and the model config
    names <|endoftext|>, which is also the pad token, so the pad id is the fallback."""
    if config.get("bos_token") is not None:
        return _token_id(config["bos_token"], ids, config_path, "bos_token")
    if model_config_path.is_file():
        model_config = _read_json(model_config_path)
        if isinstance(model_config, dict) and isinstance(model_config.get("bos_token_id"), int):
            return model_config["bos_token_id"]
    return fallback
