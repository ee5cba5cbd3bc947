"""Where model-written code runs: a bubblewrap sandbox per process, or a plain process tied to the engine.

`BwrapExecutor` starts each command in its own bubblewrap sandbox: new PID, network, IPC,
UTS and mount namespaces; an empty root with the system and the interpreter bound
read-only; only what the `View` names visible besides (the trial's worktree writable, the
harness and the data it may read read-only); a private /tmp and HOME; no network unless
the search allows it; the GPU device nodes for cuda slots; and `--die-with-parent`, so
killing the engine (even with kill -9) kills the sandbox. Nothing of the search folder
(population repository, study database, harness copy, other trials) is visible.

`LocalExecutor` is the fallback where bwrap cannot run: the same commands as plain child
processes, each in its own process group and killed with the engine (`setpriv --pdeathsig`),
but able to read and write whatever the user can. Records say which ran.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from evo.runner._process import Executor

SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
# Variables a trial may inherit from the engine (everything else is dropped: an allow-list,
# not a deny-list, so a credential under an unexpected name never reaches a trial).
ALLOWED_ENV = ("PATH", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "LC_NUMERIC", "TZ", "TERM", "LD_LIBRARY_PATH",
               "CUDA_HOME", "CUDA_PATH", "NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES", "PYTHONPATH")
# Besides those, EVO_* variables pass: the way to hand a genome a setting of your own. A name
# that looks like a credential does not, whatever its prefix.
SETTING_PREFIX = "EVO_"
_CREDENTIAL_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIAL")
TMP_SIZE = 4 << 30  # bytes of the private /tmp (memory-backed)


@dataclass(frozen=True)
class View:
    """What a sandboxed process may see besides the system and the interpreter.

    write: folders bound read-write at their own path.
    read: files or folders bound read-only at their own path (after `write`, so a read-only
        file inside a writable folder stays read-only).
    place: (source, target) read-only binds of a file at another path (the search's harness
        over the genome's copy of it).
    network: keep the host's network (off unless the search was created with --allow-network).
    gpu: pass the NVIDIA device nodes through.
    whole_system: show the whole file system read-only instead of only the system and the
        interpreter (for an agent CLI, which needs its own binaries and runtime), with the
        `hidden` folders masked by empty ones.
    hidden: folders masked in a whole-system view (the search folder).
    scratch: folders bound read-write last, so one inside a read-only folder stays writable
        (a trial's scratch folder inside its checkout, which its evaluation sees read-only).
    masked: files or folders hidden wherever the view would show them (a harness's data
        sources inside site-packages, a --read folder or the system): an empty read-only
        folder, or an empty file, over each; `write` and `read` paths inside them are shown
        again on top (the token files of the data cache).
    """

    write: tuple[Path, ...] = ()
    read: tuple[Path, ...] = ()
    place: tuple[tuple[Path, Path], ...] = ()
    network: bool = False
    gpu: bool = False
    whole_system: bool = False
    hidden: tuple[Path, ...] = ()
    scratch: tuple[Path, ...] = ()
    masked: tuple[Path, ...] = ()


def allowed_environment(env: dict[str, str]) -> dict[str, str]:
    """The part of `env` a trial may inherit (see ALLOWED_ENV and SETTING_PREFIX)."""
    return {k: v for k, v in env.items() if k in ALLOWED_ENV
            or (k.startswith(SETTING_PREFIX) and not any(w in k.upper() for w in _CREDENTIAL_WORDS))}


@functools.lru_cache(maxsize=1)
def _setpriv() -> str | None:
    path = shutil.which("setpriv")
    if path is None:
        return None
    ok = subprocess.run([path, "--pdeathsig", "KILL", "true"], capture_output=True).returncode == 0
    return path if ok else None


class LocalExecutor(Executor):
    """Runs a command as a plain child process in a new session, killed when the engine dies.

    No isolation: the process can read and write whatever the user can. `setpriv --pdeathsig
    KILL` (util-linux) ties its life to the engine's thread that started it, without the
    thread-unsafe `preexec_fn`."""

    name = "none"

    def start(self, argv, *, cwd, env, view=None, pass_fds=(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE):
        prefix = [_setpriv(), "--pdeathsig", "KILL"] if _setpriv() else []
        return subprocess.Popen(prefix + list(argv), cwd=cwd, env=env, stdin=stdin, stdout=stdout,
                                stderr=subprocess.STDOUT, start_new_session=True, pass_fds=tuple(pass_fds))


class BwrapExecutor(Executor):
    """Runs each command in a fresh bubblewrap sandbox (see the module docstring).

    Args:
        hidden: folders no sandbox may see even if a system or interpreter path holds them
            (the search folder, the user's cache): interpreter paths inside them are skipped.
        python: the interpreter trials run with; its installation is bound read-only.
        tmp_size: bytes of the private, memory-backed /tmp.
    """

    name = "bwrap"

    def __init__(self, *, hidden: tuple[Path, ...] = (), python: str = sys.executable, tmp_size: int = TMP_SIZE):
        self.binary = shutil.which("bwrap")
        if self.binary is None:
            raise RuntimeError("bwrap is not installed (apt-get install bubblewrap)")
        self.hidden = tuple(Path(h).resolve() for h in hidden)
        self.python, self.tmp_size = python, tmp_size

    def interpreter_paths(self) -> list[Path]:
        """The interpreter's installation and import path, minus anything inside a hidden folder."""
        return _interpreter_paths(self.python, self.hidden)

    def command(self, argv, *, cwd, env, view: View) -> list[str]:
        args = [self.binary, "--unshare-all", "--die-with-parent"] + (["--share-net"] if view.network else [])
        if view.whole_system:
            args += ["--ro-bind", "/", "/"]
            for p in view.hidden:
                args += ["--tmpfs", str(p)]
        private, home = _private_root(view), _home(view)
        # /dev is bwrap's own tmpfs; /dev/shm gets a size-limited one of its own, like /tmp and HOME.
        args += ["--proc", "/proc", "--dev", "/dev", "--size", str(self.tmp_size), "--tmpfs", "/dev/shm",
                 "--size", str(self.tmp_size), "--tmpfs", private]
        if view.whole_system:
            args += ["--dir", home]
        else:  # at the user's own path, so ~/.cache/... means what the project expects; --read folders bound inside
            args += ["--size", str(self.tmp_size), "--tmpfs", home]
        if not view.whole_system:
            for d in SYSTEM_DIRS:
                if os.path.isdir(d):
                    args += ["--ro-bind", d, d] if not os.path.islink(d) else ["--symlink", os.readlink(d), d]
            for p in self.interpreter_paths():
                args += ["--ro-bind", str(p), str(p)]
        for p in view.write:
            args += ["--bind", str(p), str(p)]
        for p in view.read:
            if os.path.exists(p):
                args += ["--ro-bind", str(p), str(p)]
        mask_args, emptied = _masks(view)
        args += mask_args
        for source, target in view.place:
            args += ["--ro-bind", str(source), str(target)]
        for p in view.scratch:
            args += ["--bind", str(p), str(p)]
        if view.gpu:
            for node in sorted(Path("/dev").glob("nvidia*")):
                args += ["--dev-bind", str(node), str(node)]
        for folder in emptied:  # read-only once what is shown inside them is in place
            args += ["--remount-ro", folder]
        # The root is bwrap's own tmpfs (the folders above the binds live there): read-only, so
        # nothing can be written outside the binds and the size-limited /tmp.
        return args + ([] if view.whole_system else ["--remount-ro", "/"]) + ["--chdir", str(cwd), "--", *argv]

    def start(self, argv, *, cwd, env, view=None, pass_fds=(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE):
        view = view or View()
        env = {**env, "HOME": _home(view), "TMPDIR": _private_root(view)}
        return subprocess.Popen(self.command(argv, cwd=cwd, env=env, view=view), env=env, stdin=stdin,
                                stdout=stdout, stderr=subprocess.STDOUT, start_new_session=True,
                                pass_fds=tuple(pass_fds))


def _masks(view: View) -> tuple[list[str], list[str]]:
    """bwrap arguments that hide `view.masked` (and show the view's paths inside them again), and the
    folders emptied, to be made read-only last. A path is masked at its own and its resolved name:
    an interpreter folder is bound at both."""
    args: list[str] = []
    emptied: list[str] = []
    masks = list(dict.fromkeys(q for p in view.masked for q in (Path(p), Path(p).resolve()) if q.exists()))
    for p in masks:
        if p.is_dir():
            args += ["--tmpfs", str(p)]
            emptied.append(str(p))
        else:
            args += ["--ro-bind", "/dev/null", str(p)]
    shown = [("--bind", p) for p in view.write] + [("--ro-bind", p) for p in view.read]
    for how, p in shown:
        if os.path.exists(p) and any(m in Path(p).parents for m in masks):
            args += [how, str(p), str(p)]
    return args, emptied


def _home(view: View) -> str:
    """HOME in the sandbox: a private tmpfs at the user's own home path for a trial (what a project
    finds at ~/... is what --read binds there), a private folder for a whole-system view."""
    home = str(Path.home())
    if view.whole_system or home in ("/", "", "/tmp") or home.startswith(("/proc", "/dev")):
        return f"{_private_root(view)}/home" if view.whole_system else "/tmp/home"
    return home


def _private_root(view: View) -> str:
    """The private, size-limited tmpfs holding HOME and TMPDIR: /tmp itself for a trial; for a
    whole-system view /var/tmp (an existing folder, mounted over), so the machine's own /tmp
    stays visible, read-only, and /run (where resolv.conf may point) is untouched."""
    return "/var/tmp" if view.whole_system else "/tmp"


def _interpreter_paths(python: str, hidden: tuple[Path, ...]) -> list[Path]:
    out = subprocess.run([python, "-c", "import sys, json; print(json.dumps([sys.prefix, sys.base_prefix, "
                          "sys.exec_prefix, sys.executable] + sys.path))"], capture_output=True, text=True, check=True)
    import json
    paths: list[Path] = []
    for entry in json.loads(out.stdout):
        if not entry:
            continue
        p = Path(entry)
        p = p.parent if p.is_file() or p.suffix == ".zip" else p
        for candidate in {p, p.resolve()}:
            if not candidate.exists() or str(candidate).startswith(SYSTEM_DIRS):
                continue
            if any(candidate == h or h in candidate.parents or candidate in h.parents for h in hidden):
                continue  # a path that holds the search folder or lies inside a hidden one
            if not any(candidate == q or q in candidate.parents for q in paths):
                paths = [q for q in paths if candidate not in q.parents] + [candidate]
    return paths


@functools.lru_cache(maxsize=4)
def bwrap_works(python: str = sys.executable) -> str:
    """Why bwrap cannot run a sandboxed interpreter here, or "" when it can (the probe of `--sandbox auto`)."""
    if shutil.which("bwrap") is None:
        return "bwrap is not installed (apt-get install bubblewrap)"
    probe = BwrapExecutor(python=python)
    try:
        proc = probe.start([python, "-c", "import os; print(len([p for p in os.listdir('/proc') if p.isdigit()]))"],
                           cwd=Path("/"), env=allowed_environment(dict(os.environ)))
        out, _ = proc.communicate(timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"bwrap failed to start: {e}"
    if proc.returncode != 0:
        return f"bwrap cannot create a sandbox here: {out.decode(errors='replace').strip().splitlines()[-1:]}"
    return ""
