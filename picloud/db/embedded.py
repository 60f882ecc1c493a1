"""Start (or attach to) the embedded PostgreSQL used when DATABASE_URL is unset.

The server is left running when a process exits, on purpose: the web server,
the qcluster and the test run all attach to the same data directory, and the
last one out must not pull it from under the others. `make db-stop` (or
`python -m picloud.db.embedded stop`) stops it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
DEFAULT_PGDATA = BASE_DIR / ".pgdata"


def _pgserver():
    # platformdirs warns at import time when XDG_RUNTIME_DIR is unset (it
    # falls back to a private /tmp folder, which is what we want anyway).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver
    return pgserver


def ensure_running(pgdata: Path = DEFAULT_PGDATA) -> dict:
    """Start the embedded server if needed; return Django DATABASES settings for it."""
    pgserver = _pgserver()
    pgdata.mkdir(exist_ok=True)
    server = pgserver.get_server(pgdata, cleanup_mode=None)
    info = server.get_postmaster_info()
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "postgres",
        "USER": "postgres",
        "PASSWORD": "",
        # pgserver listens on a Unix socket only: no TCP port to collide with.
        "HOST": str(info.socket_dir),
        "PORT": str(info.port or ""),
    }


def stop(pgdata: Path = DEFAULT_PGDATA) -> bool:
    """Stop the embedded server if one runs on `pgdata`; return whether it did."""
    if not (pgdata / "postmaster.pid").exists():
        return False
    pgserver = _pgserver()
    # PostgreSQL refuses to run as root; pgserver then runs it as this user.
    user = "pgserver" if os.geteuid() == 0 else None
    try:
        pgserver.pg_ctl(["-w", "stop", "-m", "fast"], pgdata=pgdata, user=user)
    except subprocess.CalledProcessError:
        return False
    return True


if __name__ == "__main__":
    if sys.argv[1:] == ["stop"]:
        print("embedded PostgreSQL stopped" if stop() else "embedded PostgreSQL was not running")
    elif sys.argv[1:] == ["start"]:
        print(ensure_running()["HOST"])
    else:
        sys.exit("usage: python -m picloud.db.embedded start|stop")
