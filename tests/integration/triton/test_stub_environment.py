"""Every Python model's stub imports only from the environment that runs trtllm-stack.

Started the way a systemd unit or ``env -i`` would: PATH=/usr/bin:/bin (Debian's python3
first, not this venv's), nothing activated, no PYTHONPATH. Each model reports, right after
its initialize(), its interpreter and the file of every module it has loaded.
"""

from __future__ import annotations

import json
import os
import sys
import sysconfig
from pathlib import Path

import pytest

import trtllm_stack
from trtllm_stack.tokenizer import bundled_qwen3_tokenizer_dir
from trtllm_stack.triton import tensors as T
from trtllm_stack.triton.model_repo import write_model_repository
from trtllm_stack.triton.python_env import current_install
from trtllm_stack.triton.server import TritonServer, cpu_tritonserver

pytestmark = pytest.mark.integration

PYTHON_MODELS = (T.PREPROCESSING_MODEL, T.POSTPROCESSING_MODEL, T.ENGINE_MODEL)

_PROBE = """

def _report_after(initialize):
    def wrapper(self, args):
        result = initialize(self, args)
        import json, os, sys
        files = {n: getattr(m, "__file__", None) for n, m in list(sys.modules.items())}
        report = {
            "prefix": sys.prefix,
            "executable": sys.executable,
            "version": list(sys.version_info[:2]),
            "files": {n: f for n, f in files.items() if isinstance(f, str)},
        }
        with open(os.path.join(args["model_repository"], "probe.json"), "w") as f:
            json.dump(report, f)
        return result
    return wrapper


TritonPythonModel.initialize = _report_after(TritonPythonModel.initialize)
"""


def _minimal_env() -> dict[str, str]:
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "LANG": "C.UTF-8"}
    if "HOME" in os.environ:
        env["HOME"] = os.environ["HOME"]
    return env


def test_every_stub_imports_only_from_this_environment(tmp_path: Path) -> None:
    repo = write_model_repository(
        tmp_path / "repo",
        engine="scripted",
        tokenizer_dir=bundled_qwen3_tokenizer_dir(),
    )
    for name in PYTHON_MODELS:
        config = (repo / name / "config.pbtxt").read_text()
        assert 'key: "EXECUTION_ENV_PATH"' in config, name
        with (repo / name / "1" / "model.py").open("a") as f:
            f.write(_PROBE)

    with TritonServer(repo, log_path=tmp_path / "tritonserver.log", env=_minimal_env()):
        pass

    install = current_install()
    stdlib = [sysconfig.get_path("stdlib"), sysconfig.get_path("platstdlib")]
    backend = cpu_tritonserver().backend_dir
    allowed = [os.path.realpath(p) for p in (*stdlib, *install.import_paths, repo, backend)]
    ours = os.path.realpath(trtllm_stack.__file__)
    for name in PYTHON_MODELS:
        report = json.loads((repo / name / "probe.json").read_text())
        assert report["version"] == list(sys.version_info[:2]), name
        assert os.path.realpath(report["files"]["trtllm_stack"]) == ours, name
        outside = {
            mod: path
            for mod, path in report["files"].items()
            if not any(os.path.realpath(path).startswith(root + os.sep) for root in allowed)
        }
        assert not outside, f"{name} imported from outside {sys.prefix}: {outside}"
        # The heavy packages the models need really came from this environment.
        for mod in ("numpy", "tokenizers"):
            assert mod in report["files"], (name, mod)
