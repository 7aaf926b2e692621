"""A real PostgreSQL server in a temporary folder, for cluster tests and benchmarks.

The Debian package's server binaries, one cluster per folder, listening on a loopback port
and a socket in the folder. PostgreSQL refuses to run as root, and the tests run as root:
the folder belongs to the ``postgres`` user and every server command runs through
``runuser``, in a folder of its own under the system's temporary folder (pytest's and
mkdtemp's folders are private to root, so the ``postgres`` user could not reach a folder
inside them). Authentication is ``trust`` on loopback only; nothing here is for production.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from testkit.localstack import free_port

PG_USER = "postgres"


def pg_bin() -> Path | None:
    """The newest installed server's binaries (``/usr/lib/postgresql/N/bin``), or None."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parent.parent.name))
    return found[-1].parent if found else None


def have_postgres() -> bool:
    return pg_bin() is not None and shutil.which("runuser") is not None


@dataclass
class PostgresServer:
    """One PostgreSQL cluster with its own folder and port."""

    folder: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="pgw-postgres-")))
    port: int = field(default_factory=free_port)

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def url(self, database: str = "postgres") -> str:
        """A SQLAlchemy/psycopg URL for ``database`` on this server."""
        return f"postgresql+psycopg://{PG_USER}@127.0.0.1:{self.port}/{database}"

    def dsn(self, database: str = "postgres") -> str:
        """A libpq connection string (psycopg, psql) for ``database``."""
        return f"host=127.0.0.1 port={self.port} user={PG_USER} dbname={database}"

    def _as_postgres(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["runuser", "-u", PG_USER, "--", *args], capture_output=True, text=True,
                              cwd=self.folder)
        if done.returncode != 0:
            raise RuntimeError(f"{Path(args[0]).name} failed: {done.stderr.strip() or done.stdout.strip()}"
                               f" (log: {self.folder / 'pg.log'})")
        return done

    def start(self) -> PostgresServer:
        binaries = pg_bin()
        if binaries is None:
            raise RuntimeError("no PostgreSQL server under /usr/lib/postgresql (apt install postgresql)")
        self.folder.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.folder, PG_USER, PG_USER)
        os.chmod(self.folder, 0o700)
        if not (self.data / "PG_VERSION").exists():
            self._as_postgres(str(binaries / "initdb"), "-D", str(self.data), "-A", "trust", "-U", PG_USER,
                              "--no-sync", "-E", "UTF8")
        options = (f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=on"
                   " -c max_connections=200")
        self._as_postgres(str(binaries / "pg_ctl"), "-D", str(self.data), "-o", options,
                          "-l", str(self.folder / "pg.log"), "-w", "-t", "30", "start")
        deadline = time.time() + 30
        while time.time() < deadline:
            ready = subprocess.run([str(binaries / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                                   capture_output=True)
            if ready.returncode == 0:
                return self
            time.sleep(0.1)
        raise TimeoutError(f"PostgreSQL did not accept connections; see {self.folder / 'pg.log'}")

    def create_database(self, name: str) -> str:
        """Create database ``name``; returns its SQLAlchemy URL."""
        binaries = pg_bin()
        assert binaries is not None
        subprocess.run([str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", PG_USER, name],
                       capture_output=True, text=True, check=True)
        return self.url(name)

    def stop(self, remove: bool = True) -> None:
        """Stop the server (fast shutdown) and, unless ``remove`` is False, delete its folder."""
        binaries = pg_bin()
        if binaries is not None and (self.data / "postmaster.pid").exists():
            subprocess.run(["runuser", "-u", PG_USER, "--", str(binaries / "pg_ctl"), "-D", str(self.data),
                            "-m", "fast", "-w", "stop"], capture_output=True, cwd=self.folder)
        if remove:
            shutil.rmtree(self.folder, ignore_errors=True)
