"""PgBouncer in transaction mode in front of a PostgreSQL server, and the
acceptance suite run through it (``make test-pgbouncer``).

``PgBouncer`` writes a private configuration, starts Debian's ``pgbouncer``
(as the ``postgres`` OS user when we are root: it refuses to run as root),
waits until it accepts connections and stops it. ``main`` runs
tests/acceptance through it twice: with LISTEN on a direct connection
(PICLOUD_LISTEN_DATABASE_URL), then with no direct URL, so every waiter
polls. docs/operations.md ("Connection pooling") tells what this proves.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote, urlsplit

import psycopg
from psycopg import sql

PROJECT_DIR = Path(__file__).resolve().parent.parent
# Below the kernel's ephemeral range (32768 on), where a client socket could hold it.
DEFAULT_PORT = 26432
DEFAULT_UPSTREAM = "postgres://postgres@127.0.0.1:5432/picloud_pgbouncer"
RUN_AS = "postgres"  # the OS user pgbouncer runs as when we are root

# Client connections are cheap in PgBouncer (no server process each): the
# acceptance suite's busiest test runs three clusters of two worker processes,
# each with a dozen threads that may connect, beside the test process itself.
MAX_CLIENT_CONN = 500
# Server connections per database and user. In transaction mode a client
# holds one only for the length of a transaction, and PiCloud's are short
# (a claim, a settle, a KV write): 20 serve the whole suite. PostgreSQL's
# max_connections (100 by default) must cover the pools of every database
# and user PgBouncer serves, plus direct connections (LISTEN, migrations,
# superuser_reserved_connections).
DEFAULT_POOL_SIZE = 20
MAX_DB_CONNECTIONS = 30  # a hard cap per database, pools of all users together
# Startup parameters psycopg may send that PgBouncer 1.18 does not track;
# PiCloud sets none it relies on (a session setting would not survive pooling).
IGNORE_STARTUP_PARAMETERS = "extra_float_digits,options"


def _libpq_value(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class PgBouncer:
    """A private PgBouncer listening on 127.0.0.1:`port`, pooling every
    database of the server `upstream` names (a postgres:// URL)."""

    def __init__(self, upstream: str, port: int = DEFAULT_PORT, root: Path | None = None) -> None:
        self.upstream = urlsplit(upstream)
        self.port = port
        self.root = root or Path(tempfile.mkdtemp(prefix="picloud-pgbouncer-", dir="/tmp"))
        self.proc: subprocess.Popen | None = None

    @property
    def user(self) -> str:
        return self.upstream.username or "postgres"

    def url(self, dbname: str) -> str:
        """A client URL of `dbname` through PgBouncer."""
        password = f":{quote(self.upstream.password, safe='')}" if self.upstream.password else ""
        return f"postgres://{quote(self.user, safe='')}{password}@127.0.0.1:{self.port}/{dbname}"

    def direct_url(self, dbname: str) -> str:
        """A URL of `dbname` on the server itself, past PgBouncer."""
        return self.upstream._replace(path=f"/{dbname}", query="", fragment="").geturl()

    def write_config(self) -> Path:
        server = [f"host={self.upstream.hostname or '127.0.0.1'}"]
        server.append(f"port={self.upstream.port or 5432}")
        if self.upstream.password:
            server.append(f"password={_libpq_value(self.upstream.password)}")
        ini = self.root / "pgbouncer.ini"
        ini.write_text(
            "[databases]\n"
            # Every database name a client asks for, on the same server.
            f"* = {' '.join(server)}\n"
            "\n[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            f"unix_socket_dir = {self.root}\n"
            "pool_mode = transaction\n"
            # Clients are checked by the server's own rules only: PgBouncer
            # passes the user through, and trust still wants it listed.
            "auth_type = trust\n"
            f"auth_file = {self.root / 'users.txt'}\n"
            f"admin_users = {self.user}\n"
            f"max_client_conn = {MAX_CLIENT_CONN}\n"
            f"default_pool_size = {DEFAULT_POOL_SIZE}\n"
            f"max_db_connections = {MAX_DB_CONNECTIONS}\n"
            f"ignore_startup_parameters = {IGNORE_STARTUP_PARAMETERS}\n"
            f"logfile = {self.log_path}\n"
            f"pidfile = {self.root / 'pgbouncer.pid'}\n"
        )
        (self.root / "users.txt").write_text(f'"{self.user}" ""\n')
        return ini

    @property
    def log_path(self) -> Path:
        return self.root / "pgbouncer.log"

    def start(self, timeout: float = 30) -> PgBouncer:
        binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        if not Path(binary).exists():
            raise RuntimeError("no pgbouncer: install Debian's package (make pgbouncer)")
        ini = self.write_config()
        user = None
        if os.geteuid() == 0:
            account = pwd.getpwnam(RUN_AS)
            user = account.pw_uid
            for path in (self.root, *self.root.iterdir()):
                os.chown(path, account.pw_uid, account.pw_gid)
        self.proc = subprocess.Popen(
            [binary, str(ini)],
            user=user,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.url("postgres"), connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return self
            except psycopg.OperationalError as exc:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"pgbouncer did not start ({exc}): {self.log()}") from None
                time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def admin(self, command: str) -> list[tuple]:
        """A command of PgBouncer's admin console (SHOW STATS, KILL db, ...)."""
        # The console speaks only the simple query protocol: client-side binding.
        with psycopg.connect(
            self.url("pgbouncer"), autocommit=True, cursor_factory=psycopg.ClientCursor
        ) as conn:
            cursor = conn.execute(command)
            return cursor.fetchall() if cursor.description else []

    def stop(self, timeout: float = 10) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # SIGINT: "safe shutdown", which closes the server connections at once.
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> PgBouncer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def _drop_database(direct_url: str, name: str) -> None:
    with psycopg.connect(direct_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def transactions_served(bouncer: PgBouncer, dbname: str) -> int:
    """Transactions PgBouncer passed to `dbname` since it started."""
    for row in bouncer.admin("SHOW STATS"):
        if row[0] == dbname:
            return int(row[1])  # total_xact_count
    return 0


# The two runs: LISTEN on a direct connection, then no direct URL (waiters poll).
RUNS = ("listen-direct", "polling")


def run_suite(bouncer: PgBouncer, dbname: str, mode: str, pytest_args: list[str]) -> int:
    test_db = f"test_{dbname}"
    env = dict(os.environ)
    env.update(
        DATABASE_URL=bouncer.url(dbname),
        PICLOUD_DATABASE_POOLER="transaction",
        PICLOUD_DATABASE_ANNOUNCED="",
        # The next port of ours for the SMTP receivers runstack starts, not the
        # default 2525 that a `make run` on the same machine may hold.
        PICLOUD_SMTP_ADDR=f"127.0.0.1:{bouncer.port + 1}",
    )
    env.pop("PICLOUD_LISTEN_DATABASE_URL", None)
    if mode == "listen-direct":
        # The test database's name, which pytest-django derives from DATABASE_URL's.
        env["PICLOUD_LISTEN_DATABASE_URL"] = bouncer.direct_url(test_db)
    print(f"== the acceptance suite through PgBouncer, {mode}", flush=True)
    # --reuse-db: pytest-django creates the test database through PgBouncer
    # and leaves it; we drop it past PgBouncer, which holds server connections
    # to it that a plain DROP DATABASE would wait for.
    paths = [] if any(a.startswith("tests/") for a in pytest_args) else ["tests/acceptance"]
    command = [sys.executable, "-m", "pytest", *paths, "--reuse-db", *pytest_args]
    pytest = subprocess.Popen(command, cwd=PROJECT_DIR, env=env)
    try:
        return pytest.wait()
    except BaseException:
        # Interrupted: let pytest stop the processes its tests started
        # before the test database is dropped under them.
        pytest.send_signal(signal.SIGINT)
        pytest.wait(120)
        raise


def main(argv: list[str]) -> int:
    """Run the suite (or the tests `argv` names, with pytest's options) both ways."""
    upstream = os.environ.get("DATABASE_URL") or DEFAULT_UPSTREAM
    dbname = urlsplit(upstream).path.lstrip("/") or "picloud_pgbouncer"
    port = int(os.environ.get("PICLOUD_PGBOUNCER_PORT") or DEFAULT_PORT)
    with PgBouncer(upstream, port) as bouncer:
        direct_admin = bouncer.direct_url("postgres")
        _drop_database(direct_admin, f"test_{dbname}")  # a leftover of an interrupted run
        results = {}
        modes = [m for m in RUNS if m == os.environ.get("PICLOUD_PGBOUNCER_RUN", m)]
        try:
            for mode in modes:
                started = time.monotonic()
                before = transactions_served(bouncer, f"test_{dbname}")
                status = run_suite(bouncer, dbname, mode, argv)
                served = transactions_served(bouncer, f"test_{dbname}") - before
                results[mode] = (status, time.monotonic() - started, served)
        finally:
            with contextlib.suppress(psycopg.Error):
                bouncer.admin(f"KILL test_{dbname}")
            _drop_database(direct_admin, f"test_{dbname}")
    for mode, (status, seconds, served) in results.items():
        verdict = "passed" if status == 0 else f"FAILED (pytest exit status {status})"
        print(
            f"pgbouncer acceptance, {mode}: {verdict} in {seconds:.0f} s; "
            f"{served} transactions through PgBouncer"
        )
    return 0 if results and all(r[0] == 0 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
