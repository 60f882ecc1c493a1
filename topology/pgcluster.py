"""Private PostgreSQL clusters on this machine: create, start, stop, crash,
stream to a standby and promote it, for drills of production topology.

As root the server's binaries refuse to run, so they run as the `postgres`
OS user (or pgserver's `pgserver` user), which then owns the directories.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import socket
import stat
import subprocess
import time
import warnings
from pathlib import Path
from urllib.parse import urlencode

import psycopg
from psycopg import sql

SERVICE_BIN = Path("/usr/lib/postgresql/15/bin")
SERVER_USERS = ("postgres", "pgserver")  # OS users the binaries may run as, when we are root
DEFAULT_URL_PARAMS = {"target_session_attrs": "read-write", "connect_timeout": "2"}


def bin_dir() -> Path:
    """The server's binaries: the system's PostgreSQL 15, else the ones pgserver ships."""
    if (SERVICE_BIN / "initdb").exists():
        return SERVICE_BIN
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        from pgserver._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


def _server_user() -> pwd.struct_passwd | None:
    """Whom to run the binaries as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in SERVER_USERS:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError(
        f"running as root, and none of the OS users {SERVER_USERS} exists to run PostgreSQL as"
    )


def _quote(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting for its parent does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def _children(pid: int) -> list[int]:
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            lines = status.read_text().splitlines()
        except OSError:
            continue
        ppid = next((line.split()[1] for line in lines if line.startswith("PPid:")), None)
        if ppid == str(pid):
            found.append(int(status.parent.name))
    return found


class PgCluster:
    def __init__(self, root: Path, port: int) -> None:
        self.root, self.port = Path(root), port
        self.data, self.log = self.root / "data", self.root / "log"
        self.user = _server_user()

    def __repr__(self) -> str:
        return f"PgCluster({str(self.root)!r}, {self.port})"

    # -- running the binaries ------------------------------------------------

    def _run(self, program: str, *args: str, timeout: float = 120) -> str:
        owner = {}
        if self.user is not None:
            owner = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        try:
            done = subprocess.run(
                [str(bin_dir() / program), *args],
                cwd=self.root,  # a directory the server's user may enter
                capture_output=True,
                text=True,
                check=True,
                timeout=timeout,
                **owner,
            )
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(
                f"{program} {' '.join(args)} failed ({exc.returncode}): {exc.stderr.strip()}"
                f"\n(server log: {self.log})"
            ) from None
        return done.stdout

    def _make_root(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.user is None:
            return
        os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        # The server's user must be able to walk down to its directory.
        for parent in self.root.resolve().parents:
            mode = parent.stat()
            if not (mode.st_mode & stat.S_IXOTH or mode.st_uid == self.user.pw_uid):
                raise RuntimeError(
                    f"{self.user.pw_name} cannot enter {parent} to reach {self.root}: "
                    "put the cluster under a directory others may enter, such as /tmp"
                )

    def _append_conf(self, path: Path, settings: dict[str, str]) -> None:
        # Later lines win in postgresql.conf: appending overrides what initdb
        # or a base backup wrote.
        with path.open("a") as conf:
            conf.write("\n# topology.pgcluster\n")
            for key, value in settings.items():
                conf.write(f"{key} = {_quote(value)}\n")

    # -- the API ----------------------------------------------------------------

    def init(self, **conf: str) -> PgCluster:
        """initdb with trust authentication, then listen on 127.0.0.1:port
        with `conf` added to postgresql.conf."""
        self._make_root()
        # C ordering with UTF-8 text, as on any machine whatever its locales.
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
        )
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.root),
            "max_connections": "200",
            "wal_level": "replica",
            "max_wal_senders": "10",
            "hot_standby": "on",
        }
        self._append_conf(self.data / "postgresql.conf", {**settings, **conf})
        return self

    def start(self, timeout: float = 30) -> PgCluster:
        self._run(
            "pg_ctl",
            "start",
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-w",
            "-t",
            str(int(timeout)),
            timeout=timeout + 10,
        )
        return self

    def stop(self, mode: str = "fast") -> None:
        if mode not in ("smart", "fast", "immediate"):
            raise ValueError(f"mode must be smart, fast or immediate, got {mode!r}")
        if self.running():
            self._run("pg_ctl", "stop", "-D", str(self.data), "-m", mode, "-w")

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (FileNotFoundError, IndexError, ValueError):
            return None

    def kill9(self, timeout: float = 30) -> None:
        """SIGKILL the postmaster, as when its host dies: its backends go
        with it (killed too, not left to notice the death on their own), and
        this returns once the port is free."""
        pid = self.postmaster_pid()
        if pid is None or not _alive(pid):
            return
        backends = _children(pid)
        os.kill(pid, signal.SIGKILL)
        for child in backends:
            with contextlib.suppress(ProcessLookupError):  # it may have gone already
                os.kill(child, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while _alive(pid) or any(map(_alive, backends)) or not _port_free(self.port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self}: still alive or port busy {timeout}s after SIGKILL")
            time.sleep(0.02)

    def running(self) -> bool:
        pid = self.postmaster_pid()
        return pid is not None and _alive(pid)

    def url(self, dbname: str = "postgres") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{dbname}"

    def sql(self, statement: str, params=None, *, dbname: str = "postgres") -> list[tuple]:
        """Run one statement in autocommit; its rows (none for a command)."""
        with psycopg.connect(self.url(dbname), autocommit=True, connect_timeout=5) as conn:
            cur = conn.execute(statement, params)
            return cur.fetchall() if cur.description else []

    def createdb(self, name: str) -> None:
        self.sql(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def standby(
        self, root: Path, port: int, *, synchronous: bool = True, name: str = "standby1"
    ) -> PgCluster:
        """A streaming standby of this cluster under `root`, started; when
        `synchronous`, this cluster's commits wait for it from now on."""
        replica = PgCluster(root, port)
        replica._make_root()
        self._run(
            "pg_basebackup",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-D",
            str(replica.data),
            "-R",  # standby.signal and primary_conninfo
            "-X",
            "stream",
            "--checkpoint=fast",
        )
        # The copied configuration is the primary's: give the standby its own
        # port and socket, and a name the primary's synchronous_standby_names
        # can refer to (the WAL receiver reports cluster_name as its name).
        replica._append_conf(
            replica.data / "postgresql.conf",
            {"port": str(port), "unix_socket_directories": str(replica.root), "cluster_name": name},
        )
        replica.start()
        self._wait_replication(name, "streaming")
        if synchronous:
            self.sql(sql.SQL("ALTER SYSTEM SET synchronous_standby_names TO {}").format(name))
            self.sql("SELECT pg_reload_conf()")
            self._wait_replication(name, "sync")
        return replica

    def _wait_replication(self, name: str, what: str, timeout: float = 30) -> None:
        column = "sync_state" if what == "sync" else "state"
        query = sql.SQL("SELECT {} FROM pg_stat_replication WHERE application_name = %s").format(
            sql.Identifier(column)
        )
        deadline = time.monotonic() + timeout
        while [row[0] for row in self.sql(query, (name,))] != [what]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self}: standby {name} not {what} after {timeout}s")
            time.sleep(0.05)

    def promote(self, timeout: float = 30) -> None:
        self._run(
            "pg_ctl",
            "promote",
            "-D",
            str(self.data),
            "-w",
            "-t",
            str(int(timeout)),
            timeout=timeout + 10,
        )

    def __enter__(self) -> PgCluster:
        return self

    def __exit__(self, *exc) -> None:
        # Immediate: a drill's server holds nothing worth a checkpoint. The
        # directories stay, with the log of a failed run.
        if self.running():
            self.stop("immediate")


def multi_host_url(clusters: list[PgCluster], dbname: str, **params: str) -> str:
    """One URL naming every cluster, for libpq to try in turn: by default
    only a read-write server is taken, and a dead one costs at most 2 s."""
    hosts = ",".join(f"127.0.0.1:{c.port}" for c in clusters)
    query = urlencode({**DEFAULT_URL_PARAMS, **params})
    return f"postgres://postgres@{hosts}/{dbname}?{query}"
