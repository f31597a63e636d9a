"""`moss-edge export OWNER/NAME ...`: a Hugging Face model id instead of a checkpoint directory.

An argument that is an existing path is always a local checkpoint; one shaped `owner/name`
that is not is downloaded with huggingface_hub (only the files the export reads) into its
usual cache. Without a network, or with HF_HUB_OFFLINE=1 and nothing cached, the error says
so and how to pass a directory fetched elsewhere.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from .checkpoint import CheckpointError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
CHECKPOINT_FILES = ["*.json", "*.safetensors", "merges.txt", "chat_template.jinja"]


def looks_like_hub_id(ref: str) -> bool:
    return not Path(ref).exists() and bool(HUB_ID.match(ref))


def resolve_checkpoint(ref: str | Path) -> Path:
    """A local checkpoint directory for `ref`, downloading a Hub model id first."""
    return download(str(ref)) if looks_like_hub_id(str(ref)) else Path(ref)


def download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download  # comes with the `export` extra
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=CHECKPOINT_FILES))
    except GatedRepoError as exc:
        raise CheckpointError(f"{repo_id}: the Hub requires accepting its terms and logging in "
                              "(`hf auth login`)") from exc
    except RepositoryNotFoundError as exc:
        raise CheckpointError(f"{repo_id}: no such local directory, and no such model on the Hugging Face "
                              "Hub (or it is private: `hf auth login`)") from exc
    except (LocalEntryNotFoundError, OSError) as exc:  # offline, unreachable, or a broken download
        why = "HF_HUB_OFFLINE is set" if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") else \
            "no network connection to the Hub"
        raise CheckpointError(
            f"{repo_id}: not a local directory, and it could not be downloaded from the Hugging Face Hub "
            f"({why}). On a machine with network run `hf download {repo_id} --local-dir DIR`, "
            "copy DIR here and run `moss-edge export DIR OUT`") from exc
