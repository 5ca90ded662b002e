"""A PostgreSQL server of Debian's packages, made for one test: a fresh cluster in a temporary folder,
listening on a free loopback port only, with a password for the one user Dagster connects as.

Postgres refuses to run as root, so where the tests run as root (CI containers) the server runs as the
`postgres` system user the Debian package creates. `restart()` is a real fast shutdown and start, which
drops every open connection, as a database failover or a server upgrade does."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

from resources.testing.explorer_server import free_port

USER = "dagster"
PASSWORD = "not-a-secret"  # loopback only, a throwaway cluster


def postgres_bindir() -> Path | None:
    """The folder of Debian's server binaries (initdb, pg_ctl), or None where PostgreSQL is not installed."""
    for folder in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists():
            return folder
    found = shutil.which("initdb")
    return Path(found).resolve().parent if found and shutil.which("pg_ctl") else None


class PostgresServer:
    """One cluster: `start()`, `restart()`, `stop()`; `env` holds the variables the instance file reads."""

    def __init__(self, folder: Path, database: str = "dagster"):
        bindir = postgres_bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL's server is not installed: apt-get install postgresql-15")
        self.bin = bindir
        self.folder = folder
        self.data = folder / "data"
        self.database = database
        self.port = free_port()
        self._as_postgres = os.geteuid() == 0
        self.log = folder / "postgres.log"

    @property
    def env(self) -> dict[str, str]:
        return {"DAGSTER_POSTGRES_HOST": "127.0.0.1", "DAGSTER_POSTGRES_PORT": str(self.port),
                "DAGSTER_POSTGRES_USER": USER, "DAGSTER_POSTGRES_PASSWORD": PASSWORD,
                "DAGSTER_POSTGRES_DB": self.database}

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        command = [str(self.bin / args[0]), *args[1:]]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, check=check, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PGPASSWORD": PASSWORD})

    def start(self) -> "PostgresServer":
        self.folder.mkdir(parents=True, exist_ok=True)
        if self._as_postgres:
            owner = pwd.getpwnam("postgres")
            os.chown(self.folder, owner.pw_uid, owner.pw_gid)
            for parent in self.folder.parents:  # the server must reach its folder through pytest's tmp tree
                if parent == Path("/"):
                    break
                parent.chmod(parent.stat().st_mode | 0o011)
        password_file = self.folder / "password"
        password_file.write_text(PASSWORD)
        if self._as_postgres:
            os.chown(password_file, pwd.getpwnam("postgres").pw_uid, -1)
        self._run("initdb", "-D", str(self.data), "-U", USER, "--auth=scram-sha-256",
                  f"--pwfile={password_file}", "-E", "UTF8", "--no-sync")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = '{self.data}'\n"
                       "fsync = off\nmax_connections = 200\n")
        self._pg_ctl("start")
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, self.database)
        return self

    def _pg_ctl(self, action: str) -> None:
        args = ["pg_ctl", "-D", str(self.data), "-w", "-t", "60", "-m", "fast", "-l", str(self.log), action]
        out = self._run(*args, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"pg_ctl {action} failed: {out.stderr or out.stdout}; log: {self.log}")

    def restart(self) -> None:
        self._pg_ctl("restart")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._pg_ctl("stop")
