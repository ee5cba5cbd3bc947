"""Throw-away PostgreSQL clusters and git daemons on 127.0.0.1, for the multi-host tests and benches.

PostgreSQL refuses to run as root: when the tests run as root, the cluster belongs to the
`postgres` user (the Debian package makes it) and its folder is handed to that user.
Anything missing raises `Unavailable` with a sentence saying what to install, so a test
can skip with that reason.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


class Unavailable(RuntimeError):
    """A service cannot be started here; the message says why."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise Unavailable("PostgreSQL is not installed (apt-get install -y postgresql)")


class Postgres:
    """One PostgreSQL cluster in a temporary folder, listening on 127.0.0.1 only, trusting local users.

    >>> pg = Postgres().start(); url = pg.create_database("s"); ...; pg.stop()   # doctest: +SKIP
    """

    def __init__(self):
        self.bin = _pg_bin()
        self.folder = Path(tempfile.mkdtemp(prefix="evo-pg-"))
        self.port = free_port()
        self.user = None
        if os.geteuid() == 0:
            import pwd

            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                raise Unavailable("running as root, and there is no postgres user to run PostgreSQL as") from None
            self.user = "postgres"
            os.chown(self.folder, owner.pw_uid, owner.pw_gid)
        self.data = self.folder / "data"

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        argv = [str(self.bin / args[0]), *args[1:]]
        if self.user:
            argv = ["runuser", "-u", self.user, "--", *argv]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=self.folder)
        if proc.returncode != 0:
            raise Unavailable(f"{args[0]} failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
        return proc

    def start(self) -> "Postgres":
        if not self.data.exists():
            self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "evo", "-E", "UTF8", "--no-sync")
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.folder} -c fsync=off "
                   "-c synchronous_commit=off -c max_connections=200")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.folder / "log"), "-w", "-o", options, "start")
        return self

    def stop(self, *, mode: str = "fast") -> None:
        """Stop the server (keeping its data: `start` brings it back)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def url(self, database: str) -> str:
        return f"postgresql://evo@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A fresh, empty database; returns its URL."""
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def destroy(self) -> None:
        try:
            self.stop(mode="immediate")
        except Exception:
            pass
        shutil.rmtree(self.folder, ignore_errors=True)


class GitDaemon:
    """`git daemon` serving the bare repositories under `base` over git:// on 127.0.0.1, pushes allowed."""

    def __init__(self, base: Path):
        self.base = Path(base)
        self.port = free_port()
        self.proc = subprocess.Popen(["git", "daemon", "--reuseaddr", f"--base-path={self.base}", "--export-all",
                                      "--enable=receive-pack", "--listen=127.0.0.1", f"--port={self.port}",
                                      str(self.base)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise Unavailable("git daemon did not start")

    def url(self, repository: str) -> str:
        return f"git://127.0.0.1:{self.port}/{repository}"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
