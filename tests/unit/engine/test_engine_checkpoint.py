"""Checkpoint resolution: huggingface_hub's real exception classes mapped to one-line messages.

snapshot_download itself is replaced (no hub here); the exceptions are huggingface_hub's own.
"""

import re

import huggingface_hub
import pytest
from engine_testlib import NVFP4_QUANT_CONFIG, make_hf_checkpoint
from huggingface_hub import errors as hf_errors

from trtllm_stack.engine.checkpoint import DOWNLOAD_PATTERNS, resolve_checkpoint
from trtllm_stack.errors import UserError

REPO = "nvidia/Qwen3-32B-NVFP4"


def bare(cls, message="boom"):
    """An instance of a hub error class without an HTTP response object."""
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    return err


def fail_with(monkeypatch, exc):
    def fake(**kwargs):
        raise exc

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)


def test_local_dir_is_used_as_is(tmp_path):
    ckpt = make_hf_checkpoint(tmp_path / "c", NVFP4_QUANT_CONFIG)
    r = resolve_checkpoint(REPO, "main", ckpt)
    assert (r.path, r.revision, r.source) == (ckpt.resolve(), "local", "local-dir")


def test_local_dir_errors(tmp_path):
    with pytest.raises(UserError, match="not a directory"):
        resolve_checkpoint(REPO, "main", tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=re.escape("no config.json")):
        resolve_checkpoint(REPO, "main", tmp_path / "empty")


def test_download_passes_pinned_revision_and_patterns(tmp_path, monkeypatch):
    seen = {}

    def fake(**kwargs):
        seen.update(kwargs)
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    r = resolve_checkpoint(REPO, "abc123", None)
    assert seen == {
        "repo_id": REPO,
        "revision": "abc123",
        "allow_patterns": DOWNLOAD_PATTERNS,
    }
    assert (r.path, r.revision, r.source) == (tmp_path, "abc123", "hub-or-cache")


def test_gated_repo(monkeypatch):
    fail_with(monkeypatch, bare(hf_errors.GatedRepoError))
    with pytest.raises(UserError, match=r"is gated: accept its license on https://huggingface.co/"):
        resolve_checkpoint(REPO, "main")


@pytest.mark.parametrize(
    ("token", "hint"), [(None, "no Hugging Face token"), ("hf_x", "a token is set")]
)
def test_repo_not_found_mentions_token(monkeypatch, token, hint):
    fail_with(monkeypatch, bare(hf_errors.RepositoryNotFoundError))
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: token)
    with pytest.raises(UserError, match=hint):
        resolve_checkpoint(REPO, "main")


def test_revision_not_found(monkeypatch):
    fail_with(monkeypatch, bare(hf_errors.RevisionNotFoundError))
    with pytest.raises(UserError, match="revision 'deadbeef' not found in nvidia/Qwen3-32B-NVFP4"):
        resolve_checkpoint(REPO, "deadbeef")


def test_offline_cache_miss(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fail_with(
        monkeypatch,
        hf_errors.LocalEntryNotFoundError("Cannot find an appropriate cached snapshot"),
    )
    with pytest.raises(
        UserError, match=r"offline \(HF_HUB_OFFLINE=1\) and nvidia/Qwen3-32B-NVFP4@main"
    ):
        resolve_checkpoint(REPO, "main")


def test_online_network_failure(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    fail_with(
        monkeypatch,
        hf_errors.LocalEntryNotFoundError("Got: ConnectError: no route\nmore"),
    )
    with pytest.raises(UserError) as exc:
        resolve_checkpoint(REPO, "main")
    assert str(exc.value).endswith("not in the Hugging Face cache: Got: ConnectError: no route")


def test_disk_full(monkeypatch):
    fail_with(monkeypatch, OSError(28, "No space left on device"))
    with pytest.raises(UserError, match="No space left on device"):
        resolve_checkpoint(REPO, "main")
