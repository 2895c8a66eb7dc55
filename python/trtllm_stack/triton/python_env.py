"""The Python that Triton's Python backend stubs run: pinned to this interpreter's packages.

Why this exists (python_backend r24.10, the release in Triton 2.51 / nvidia-pytriton):
- the stub (``triton_python_backend_stub``) embeds CPython through pybind11 v2.10.0
  (CMakeLists.txt: ``GIT_TAG "aa304c9c..." # COMMIT ID for v2.10.0``), whose
  ``initialize_interpreter`` on Python >= 3.11 starts from ``PyConfig_InitIsolatedConfig``
  with no argv (include/pybind11/embed.h:151-155): PYTHONPATH/PYTHONHOME are ignored,
  there is no user site, and with no program name CPython falls back to ``python3`` and
  finds its installation (stdlib, ``pyvenv.cfg``, site-packages) through the first
  ``python3`` on PATH. So the stub's packages depend on whoever is first on PATH.
- the backend's own knob is the model parameter ``EXECUTION_ENV_PATH``: a directory is
  used as is (src/pb_env.cc:266-273) and the stub is started as
  ``bash -c "source <env>/bin/activate && exec env LD_LIBRARY_PATH=<env>/lib:$LD_LIBRARY_PATH
  <stub> ..."`` (src/stub_launcher.cc:362-375); README "Creating Custom Execution
  Environments" documents unpacked environments with an activation script.

So the model repository generator points ``EXECUTION_ENV_PATH`` of every Python model at an
environment written here for the interpreter that runs trtllm-stack: ``bin/python3`` is that
interpreter's base executable, ``pyvenv.cfg`` makes the stub a venv of it, ``bin/activate``
puts ``bin/`` first on PATH, and a ``.pth`` file adds this interpreter's ``sys.path`` (its
venv, user site, PYTHONPATH, editable install). Whether the venv is activated, how the
command was found, and what PATH says no longer matter.

Each environment gets its own directory (keyed by a hash of the interpreter and its
``sys.path``) under a per-user directory in the system temp dir, as does the backend
directory with the stub for its Python version, so runs from different environments never
share or rewrite each other's files.
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
import sysconfig
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from trtllm_stack.errors import UserError

_PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the directory holding trtllm_stack/


@dataclass(frozen=True)
class PythonInstall:
    """What the stub must reproduce: an interpreter and the import path it uses."""

    base_executable: Path  # the real interpreter binary (not a venv's symlink)
    version: str  # "3.11"
    import_paths: tuple[str, ...]  # beyond the stdlib, in order

    @property
    def key(self) -> str:
        text = "\0".join((str(self.base_executable), self.version, *self.import_paths))
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def current_install() -> PythonInstall:
    """This interpreter and its import path (script directory and stdlib left out)."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    stdlib = {sysconfig.get_path("stdlib"), sysconfig.get_path("platstdlib")}
    # sys.path[0] is the running script's directory (e.g. venv/bin) or the working directory.
    paths = sys.path if sys.flags.safe_path else sys.path[1:]
    seen: set[str] = set()
    keep: list[str] = []
    for p in [*paths, str(_PACKAGE_ROOT)]:
        if not p or p in seen or not os.path.isdir(p):
            continue
        if any(s and (p == s or p.startswith(s + os.sep + "lib-dynload")) for s in stdlib):
            continue  # the stub's own stdlib, found through pyvenv.cfg's home
        seen.add(p)
        keep.append(os.path.abspath(p))
    return PythonInstall(
        base_executable=Path(os.path.realpath(base)),
        version=f"{sys.version_info.major}.{sys.version_info.minor}",
        import_paths=tuple(keep),
    )


def state_dir() -> Path:
    """Per-user directory in the system temp dir, refused if someone else owns it."""
    path = Path(tempfile.gettempdir()) / f"trtllm-stack-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        # Another user could plant an activation script there: never use it.
        raise UserError(f"{path} is not a private directory of this user; remove it")
    return path


def _tmp_name(name: str) -> str:
    """Unique per process *and* thread: replicas start in parallel threads of one process."""
    return f".{name}.{os.getpid()}.{threading.get_ident()}"


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    """Atomic and idempotent: concurrent runs of the same environment write equal bytes."""
    if path.is_file() and not path.is_symlink():
        try:
            if path.read_text(encoding="utf-8") == text:
                return
        except OSError:
            pass
    tmp = path.with_name(_tmp_name(path.name))
    tmp.write_text(text, encoding="utf-8")
    tmp.chmod(mode)
    tmp.replace(path)


def symlink(link: Path, target: Path) -> None:
    """Point ``link`` at ``target`` atomically (leave it if it already does)."""
    if link.is_symlink() and os.readlink(link) == str(target):
        return
    tmp = link.with_name(_tmp_name(link.name))
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    tmp.replace(link)


def write_execution_env(install: PythonInstall | None = None, root: Path | None = None) -> Path:
    """Write (or refresh) the execution environment for ``install``; return its directory."""
    install = install or current_install()
    if not install.base_executable.is_file():
        raise UserError(f"Python interpreter {install.base_executable} does not exist")
    env = (root or state_dir()) / f"py{install.version}-{install.key}" / "env"
    bin_dir = env / "bin"
    site_dir = env / "lib" / f"python{install.version}" / "site-packages"
    bin_dir.mkdir(parents=True, exist_ok=True)
    site_dir.mkdir(parents=True, exist_ok=True)
    symlink(bin_dir / "python3", install.base_executable)
    # CPython's getpath: a pyvenv.cfg next to bin/ makes sys.prefix this directory and
    # takes the stdlib from ``home``; the .pth below then adds the real site directories.
    _write(
        env / "pyvenv.cfg",
        f"home = {install.base_executable.parent}\n"
        "include-system-site-packages = false\n"
        f"version = {install.version}\n",
    )
    # Sourced by bash in stub_launcher.cc before it execs the stub.
    _write(
        bin_dir / "activate",
        "# Written by trtllm-stack: Triton's Python backend sources this before starting\n"
        "# its stub, whose embedded Python finds its installation via python3 on PATH.\n"
        f'PATH="{bin_dir}:$PATH"\nexport PATH\nunset PYTHONHOME\n',
    )
    # site.addsitedir also runs the .pth files of those directories (editable installs).
    # One line, exec'd in site.addpackage's locals: no comprehension (its scope cannot see
    # the imported name).
    _write(
        site_dir / "trtllm_stack_env.pth",
        f"import site; list(map(site.addsitedir, {list(install.import_paths)!r}))\n",
    )
    return env
