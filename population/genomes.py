"""The population as a git repository of its own.

Every genome is a commit whose tree holds the mutable files and whose git parents are
its genetic parents (a crossover child is a merge commit). Commits are written straight
into the object database through a temporary index, so no checkout is touched; trials
run in per-device worktrees of the same repository. One process owns ref updates.

A search shared by several hosts also has a remote: a bare repository every host pushes
its genomes to and fetches the others' from (a path, file://, ssh:// or git://). Pushes
only ever add refs that name one commit for good, so hosts never contend for a ref.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import git

from population.errors import StorageError

_IDENTITY = {
    "GIT_AUTHOR_NAME": "evoresearch", "GIT_AUTHOR_EMAIL": "evo@localhost",
    "GIT_COMMITTER_NAME": "evoresearch", "GIT_COMMITTER_EMAIL": "evo@localhost",
}
# The engine's git never runs anything a genome could have planted: no hooks, no fsmonitor, no
# external diff or pager, no user or system config; GIT_* variables of the caller are dropped.
SAFE_CONFIG = ("-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false", "-c", "diff.external=",
               "-c", "core.pager=cat", "-c", "protocol.ext.allow=never")


def git_environment(extra: dict | None = None) -> dict[str, str]:
    """The environment of the engine's git processes: the caller's minus GIT_*, with no global or system config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL="/dev/null", GIT_TERMINAL_PROMPT="0", **_IDENTITY)
    env.update(extra or {})
    return env


def safe_git(*args: str, **kwargs) -> subprocess.CompletedProcess:
    """Run git with SAFE_CONFIG and git_environment (see above)."""
    return subprocess.run(["git", *SAFE_CONFIG, *args], env=git_environment(kwargs.pop("env", None)), **kwargs)


@dataclass
class Genome:
    """A genome as a proposer sees it: its trial, commit and the text of its mutable files."""

    trial: int
    commit: str
    files: dict[str, str]
    description: str = ""
    score: float | None = None


# Talking to a remote never waits for a person (no password prompt) nor forever on a dead host.
REMOTE_TIMEOUT = 600
_REMOTE_ENV = {"GIT_TERMINAL_PROMPT": "0",
               "GIT_SSH_COMMAND": os.environ.get("GIT_SSH_COMMAND", "ssh -o BatchMode=yes -o ConnectTimeout=20")}


class RemoteError(StorageError):
    """The git remote cannot be reached or refused a push; the message is one line."""


def is_local_remote(url: str) -> bool:
    """Whether `url` names a repository on a disk this host can see (a path or file://)."""
    return url.startswith(("/", "./", "../", "file://")) or ("://" not in url and ":" not in url)


def remote_path(url: str) -> Path:
    return Path(url[len("file://"):] if url.startswith("file://") else url)


class GenomeRepo:
    """A bare git repository holding one search's genomes.

    >>> repo = GenomeRepo.init("runs/demo/population.git")              # doctest: +SKIP
    >>> seed = repo.commit({"train.py": text}, parents=[], message="seed")  # doctest: +SKIP
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.repo = git.Repo(self.path)

    @classmethod
    def init(cls, path: str | Path) -> "GenomeRepo":
        path = Path(path)
        git.Repo.init(path, bare=True, initial_branch="main").close()
        repo = cls(path)
        with repo.repo.config_writer() as cfg:  # worktrees share this; keep run outputs out of `git status`
            cfg.set_value("core", "excludesFile", str((path / "info" / "exclude").resolve()))
        (path / "info").mkdir(exist_ok=True)
        (path / "info" / "exclude").write_text("__pycache__/\n*.pyc\n")
        return repo

    def close(self) -> None:
        self.repo.close()

    def _git(self, *args: str, input: str | None = None, env: dict | None = None, check: bool = True,
             timeout: float | None = None) -> subprocess.CompletedProcess:
        proc = safe_git(f"--git-dir={self.path}", *args, input=input, capture_output=True, encoding="utf-8", env=env,
                        timeout=timeout)
        if check and proc.returncode != 0:
            raise git.GitCommandError(["git", *args], proc.returncode, proc.stderr)
        return proc

    # -- writing --------------------------------------------------------------

    def write_tree(self, files: dict[str, str]) -> str:
        """Store `files` (path -> text) as a tree and return its hash: the genome's content hash."""
        with tempfile.TemporaryDirectory() as tmp:
            env = {"GIT_INDEX_FILE": os.path.join(tmp, "index")}
            lines = []
            for path, text in sorted(files.items()):
                blob = self._git("hash-object", "-w", "--stdin", "--path", path, input=text).stdout.strip()
                lines.append(f"100644 {blob} 0\t{path}\n")
            self._git("update-index", "--add", "--index-info", input="".join(lines), env=env)
            return self._git("write-tree", env=env).stdout.strip()

    def commit(self, files: dict[str, str], *, parents: list[str], message: str) -> str:
        """Write a commit of `files` with the given git parents; return its hash."""
        tree = self.write_tree(files)
        args = ["commit-tree", tree]
        for parent in parents:
            args += ["-p", parent]
        return self._git(*args, input=message).stdout.strip()

    def set_branch(self, name: str, commit: str) -> None:
        self._git("update-ref", f"refs/heads/{name}", commit)

    def has_branch(self, name: str) -> bool:
        return self._git("show-ref", "--verify", "--quiet", f"refs/heads/{name}", check=False).returncode == 0

    def set_branches(self, branches: dict[str, str]) -> None:
        """Point many branches at their commits with one git process."""
        if branches:
            self._git("update-ref", "--stdin", input="".join(f"update refs/heads/{name} {commit}\n"
                                                             for name, commit in branches.items()))

    # -- the remote -------------------------------------------------------------

    def push(self, url: str, refspecs: list[str]) -> None:
        """Push `refspecs` (commit:ref) to the remote at `url`; RemoteError with git's reason if it fails."""
        if refspecs:
            self._remote("push", "--quiet", "--no-verify", url, *refspecs)

    def fetch(self, url: str, refspecs: list[str]) -> None:
        """Fetch `refspecs` from the remote at `url` (objects and refs); RemoteError if it fails."""
        self._remote("fetch", "--quiet", "--no-tags", "--no-write-fetch-head", url, *refspecs)

    def _remote(self, *args: str) -> None:
        try:
            proc = self._git(*args, check=False, env=_REMOTE_ENV, timeout=REMOTE_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise RemoteError(f"git {args[0]} got no answer in {REMOTE_TIMEOUT} s") from None
        if proc.returncode != 0:
            raise RemoteError(_reason(proc.stderr) or f"git {args[0]} failed")

    @staticmethod
    def check_remote(url: str, *, create: bool = False) -> None:
        """Raise RemoteError unless `url` answers as a git repository; with `create`, make a bare one
        where a missing local path (or file:// URL) points."""
        if create and is_local_remote(url) and not remote_path(url).exists():
            git.Repo.init(remote_path(url), bare=True, initial_branch="main").close()
        try:
            proc = subprocess.run(["git", "ls-remote", "--heads", url, "evo-probe"], capture_output=True, text=True,
                                  env={**os.environ, **_REMOTE_ENV}, timeout=60)
        except subprocess.TimeoutExpired:
            raise RemoteError(f"cannot reach the git remote {url}: no answer in 60 s") from None
        if proc.returncode != 0:
            raise RemoteError(f"cannot reach the git remote {url}: {_reason(proc.stderr) or 'no answer'}")

    # -- reading --------------------------------------------------------------

    def missing(self, commits) -> set[str]:
        """Those of `commits` this repository does not hold (one git process for all)."""
        commits = [c for c in dict.fromkeys(commits) if c]
        if not commits:
            return set()
        out = self._git("cat-file", "--batch-check", input="".join(f"{c}^{{commit}}\n" for c in commits)).stdout
        return {c for c, line in zip(commits, out.splitlines()) if line.endswith("missing")}

    def branches(self, prefix: str) -> dict[str, str]:
        """Branch name -> commit for every branch under `prefix` (one git process)."""
        out = self._git("for-each-ref", "--format=%(refname:lstrip=2) %(objectname)", f"refs/heads/{prefix}").stdout
        return dict(line.split(" ", 1) for line in out.splitlines() if line)

    def tree_of(self, commit: str) -> str:
        return self._git("rev-parse", f"{commit}^{{tree}}").stdout.strip()

    def files(self, commit: str, paths: list[str] | None = None) -> dict[str, str]:
        """The text of every file (or of `paths`) in the genome at `commit`.

        Plain `git` processes, not GitPython's shared object reader: proposal threads
        read genomes concurrently, and that reader is not thread-safe."""
        if paths is None:
            paths = self._git("ls-tree", "-r", "--name-only", commit).stdout.splitlines()
        return {p: self._git("cat-file", "blob", f"{commit}:{p}").stdout for p in paths}

    def resolve(self, ref: str) -> str:
        """The commit a branch or other ref points at."""
        return self._git("rev-parse", ref).stdout.strip()

    def message(self, commit: str) -> str:
        """The full commit message (subject, rationale and Evo-* trailers)."""
        return self._git("log", "-1", "--format=%B", commit).stdout

    def parents(self, commit: str) -> list[str]:
        return self._git("rev-list", "--parents", "-n1", commit).stdout.split()[1:]

    def merge_base(self, a: str, b: str) -> str | None:
        proc = self._git("merge-base", a, b, check=False)
        return proc.stdout.strip() or None

    def diff(self, old: str, new: str, context: int = 3) -> str:
        """Unified diff between two genomes."""
        return self._git("diff", f"-U{context}", "--no-color", "--no-ext-diff", "--no-textconv", old, new).stdout

    # -- worktrees ------------------------------------------------------------

    def checkout(self, worktree: str | Path, commit: str) -> Path:
        """Check `commit` out into a fresh, empty `worktree`, removing whatever was there first.

        Fresh rather than cleaned: `git clean` leaves nested repositories, named pipes and
        folders made unreadable, and a trial must find nothing an earlier one left."""
        worktree = Path(worktree).parent.resolve() / Path(worktree).name
        remove_tree(worktree)
        worktree.parent.mkdir(parents=True, exist_ok=True)
        self._git("worktree", "prune")
        self._git("worktree", "add", "--force", "--detach", str(worktree), commit)
        return worktree


def remove_tree(path: Path) -> None:
    """Remove `path` and everything below it, whatever a trial did to it: links are removed, never
    followed; folders it made unreadable or unwritable are opened up first."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink()
    elif path.exists():
        shutil.rmtree(path, onerror=_open_up_and_retry)


def _open_up_and_retry(function, name: str, _error) -> None:
    """rmtree's second try at what it could not list or remove: its folder (and itself, if a folder)
    made readable and writable again."""
    if not os.path.lexists(name):
        return
    os.chmod(os.path.dirname(name), 0o700)
    if os.path.isdir(name) and not os.path.islink(name):
        os.chmod(name, 0o700)
        shutil.rmtree(name, onerror=_open_up_and_retry)
    else:
        os.unlink(name)


def _reason(stderr: str) -> str:
    """The line of git's complaint that says what went wrong."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in lines:
        if line.startswith(("fatal:", "error:")):
            return line.split(":", 1)[1].strip()
    return lines[0] if lines else ""


def genome_hash(files: dict[str, str]) -> str:
    """The git tree hash of `files`, computed without git: a genome's content identity.

    Equal to what `GenomeRepo.write_tree(files)` returns, so proposers can check whether a
    genome is already known without touching the repository."""
    import hashlib

    def obj(kind: bytes, body: bytes) -> bytes:
        return hashlib.sha1(kind + b" " + str(len(body)).encode() + b"\0" + body).digest()

    def tree(entries: dict) -> bytes:
        rows = []
        for name, value in entries.items():
            if isinstance(value, dict):
                rows.append((name + "/", b"40000 " + name.encode() + b"\0" + tree(value)))
            else:
                rows.append((name, b"100644 " + name.encode() + b"\0" + obj(b"blob", value.encode("utf-8"))))
        rows.sort(key=lambda r: r[0])  # git orders a subtree as if its name ended in '/'
        return obj(b"tree", b"".join(r[1] for r in rows))

    nested: dict = {}
    for path, text in files.items():
        *dirs, name = path.split("/")
        node = nested
        for d in dirs:
            node = node.setdefault(d, {})
        node[name] = text
    return tree(nested).hex()


def merge_texts(base: str, ours: str, theirs: str, *, labels: tuple[str, str, str] = ("ours", "base", "theirs")) -> tuple[str, bool]:
    """Three-way merge of three texts with `git merge-file`: (merged text, had conflicts).

    On conflict the text holds git's conflict markers, labelled with `labels`. Needs no
    repository, so proposers may call it from worker threads. When one side did not change
    the base, or both made the same change, the answer is known without git (as git itself
    would give it): the offline crossover aligns every constant first, so that is its usual case."""
    if ours == theirs or base == theirs:
        return ours, False
    if base == ours:
        return theirs, False
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for name, text in (("ours", ours), ("base", base), ("theirs", theirs)):
            p = os.path.join(tmp, name)
            Path(p).write_text(text, encoding="utf-8")
            paths.append(p)
        proc = subprocess.run(["git", "merge-file", "-p", "-L", labels[0], "-L", labels[1], "-L", labels[2], *paths],
                              capture_output=True, encoding="utf-8")
        if proc.returncode < 0 or proc.returncode > 127:
            raise git.GitCommandError(["git", "merge-file"], proc.returncode, proc.stderr)
        return proc.stdout, proc.returncode > 0
