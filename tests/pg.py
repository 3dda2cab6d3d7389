"""A throw-away PostgreSQL cluster for tests: initdb + pg_ctl on a temporary folder.

The cluster listens on 127.0.0.1 on a free port (and on a unix socket inside its own folder),
trusts local connections, and is stopped and deleted at the end. As root (CI) the server runs
as the `postgres` user, which PostgreSQL requires. Tests that need it skip, saying why, only
when the binaries cannot be found.

Use the pytest fixtures `pg_cluster` (one per session) and `pg_url` (a fresh database per
test): `from pg import pg_cluster, pg_url  # noqa: F401` in a test module.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from serve_proc import free_port

_SEARCH = ["/usr/lib/postgresql/*/bin", "/usr/local/pgsql/bin", "/usr/pgsql-*/bin",
           "/opt/homebrew/opt/postgresql*/bin", "/usr/local/opt/postgresql*/bin"]


def find_bin_dir() -> Path | None:
    """The folder holding initdb and pg_ctl (PATH first, then the usual install places)."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    for pattern in _SEARCH:
        for folder in sorted(glob.glob(pattern), reverse=True):  # newest version first
            if (Path(folder) / "initdb").exists() and (Path(folder) / "pg_ctl").exists():
                return Path(folder)
    return None


class PgCluster:
    """One PostgreSQL server on loopback; `start()`, `stop()`, `restart()`, `new_database()`."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="skin-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.user = "postgres" if os.geteuid() == 0 else None  # the OS user running the server
        self.db_user = "postgres"
        if self.user:
            # The postgres user must own the folder; /tmp itself is world-traversable.
            os.chmod(self.root, 0o700)
            shutil.chown(self.root, user=self.user)
        self._run(["initdb", "-D", str(self.data), "-U", self.db_user, "-A", "trust",
                   "-E", "UTF8", "--no-locale", "--no-sync"], timeout=120)
        conf = self.data / "postgresql.conf"
        with open(conf, "a", encoding="utf-8") as fh:
            fh.write(f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                     f"unix_socket_directories = '{self.root}'\nfsync = off\n"
                     "max_connections = 200\nshared_buffers = 16MB\n")

    def _run(self, args: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        try:
            return subprocess.run(cmd, check=True, capture_output=True, text=True,
                                  timeout=timeout, cwd=self.root)
        except subprocess.CalledProcessError as exc:
            tail = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed: {exc.stderr}{exc.stdout}\n{tail}"
                               ) from exc

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self._run(["pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                   "start"], timeout=90)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`fast` disconnects clients and aborts their transactions)."""
        self._run(["pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop"],
                  timeout=90)

    def restart(self, down_s: float = 0.0) -> None:
        """Stop, stay down `down_s` seconds, start again on the same port."""
        self.stop()
        time.sleep(down_s)
        self.start()

    def url(self, database: str = "postgres") -> str:
        """A SQLAlchemy URL (the form users pass to --store) for `database`."""
        return f"postgresql://{self.db_user}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """Create an empty database and return its URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(host="127.0.0.1", port=self.port, user=self.db_user,
                             dbname="postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def destroy(self) -> None:
        """Stop the server (if running) and delete its folder."""
        try:
            if (self.data / "postmaster.pid").exists():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def _skip_reason() -> str | None:
    try:
        import psycopg  # noqa: F401
        import sqlalchemy  # noqa: F401
    except ImportError as exc:
        return f"PostgreSQL tests need sqlalchemy and psycopg ({exc}); pip install -e '.[dev]'"
    if find_bin_dir() is None:
        return ("PostgreSQL server binaries (initdb, pg_ctl) not found; install the "
                "`postgresql` package (.ci/run does) to run the PostgreSQL store tests")
    if os.geteuid() == 0 and not shutil.which("runuser"):
        return "running as root without `runuser`: cannot start PostgreSQL as `postgres`"
    return None


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One PostgreSQL server for the whole session, on a free loopback port."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    cluster = PgCluster(find_bin_dir())  # type: ignore[arg-type]
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> str:
    """A fresh, empty database on the session's PostgreSQL server."""
    return pg_cluster.new_database()
