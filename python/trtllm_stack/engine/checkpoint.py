"""Find the Hugging Face checkpoint: a local directory, the HF cache, or a pinned download.

``huggingface_hub.snapshot_download`` already honours the HF cache (``HF_HOME`` /
``HF_HUB_CACHE``) and offline mode (``HF_HUB_OFFLINE=1``); this module turns its exceptions
into one-line messages that say what to do. Exception classes are those of
``huggingface_hub.errors`` (checked in the installed 2.x source: GatedRepoError is a subclass
of RepositoryNotFoundError, offline cache misses raise LocalEntryNotFoundError).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from trtllm_stack.errors import UserError

# Only what conversion and the engine dir need: weights, configs, tokenizer, chat template.
DOWNLOAD_PATTERNS = ["*.safetensors", "*.json", "*.txt", "*.jinja", "*.model", "*.tiktoken"]


@dataclass(frozen=True)
class ResolvedCheckpoint:
    path: Path
    repo: str
    revision: str
    source: str  # "local-dir" or "hub-or-cache"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def resolve_checkpoint(
    repo: str, revision: str, local_dir: Path | None = None
) -> ResolvedCheckpoint:
    if local_dir is not None:
        path = Path(local_dir).expanduser().resolve()
        if not path.is_dir():
            raise UserError(f"--checkpoint {path}: not a directory")
        if not (path / "config.json").is_file():
            raise UserError(f"--checkpoint {path}: no config.json, not a Hugging Face checkpoint")
        return ResolvedCheckpoint(path=path, repo=repo, revision="local", source="local-dir")

    try:
        import huggingface_hub
        from huggingface_hub import errors as hf_errors
    except ImportError:
        raise UserError(
            "huggingface_hub is not installed; pip install 'trtllm-stack[build]'"
            " or pass --checkpoint DIR"
        ) from None

    where = f"{repo}@{revision}"
    try:
        path_str = huggingface_hub.snapshot_download(
            repo_id=repo, revision=revision, allow_patterns=DOWNLOAD_PATTERNS
        )
    except hf_errors.GatedRepoError:
        raise UserError(
            f"{repo} is gated: accept its license on https://huggingface.co/{repo} with your"
            " account, then log in (hf auth login) or set HF_TOKEN"
        ) from None
    except hf_errors.RepositoryNotFoundError:
        token_hint = (
            "a token is set, so check the repo name"
            if huggingface_hub.get_token()
            else "no Hugging Face token is set (hf auth login or HF_TOKEN) if the repo is private"
        )
        raise UserError(f"{repo} not found or not accessible: {token_hint}") from None
    except hf_errors.RevisionNotFoundError:
        raise UserError(
            f"revision {revision!r} not found in {repo}; pass --revision with a commit or branch"
            " that exists"
        ) from None
    except hf_errors.LocalEntryNotFoundError as exc:
        if _offline():
            raise UserError(
                f"offline (HF_HUB_OFFLINE=1) and {where} is not in the Hugging Face cache;"
                " download it once online or pass --checkpoint DIR"
            ) from None
        raise UserError(
            f"cannot download {where} and it is not in the Hugging Face cache: {_first_line(exc)}"
        ) from None
    except hf_errors.LocalTokenNotFoundError:
        raise UserError(f"{repo} needs a token: hf auth login or set HF_TOKEN") from None
    except hf_errors.HfHubHTTPError as exc:
        raise UserError(f"Hugging Face hub error for {where}: {_first_line(exc)}") from None
    except OSError as exc:
        raise UserError(f"cannot store {where}: {exc.strerror or exc}") from None
    if not isinstance(path_str, str):
        raise UserError(f"snapshot_download returned no directory for {where}")
    return ResolvedCheckpoint(Path(path_str), repo, revision, source="hub-or-cache")
