"""The failover drill's client, a process of its own with DATABASE_URL set:
`setup` makes the tenant (app, scripts, KV trigger, API token) and prints
it as JSON; `write OUT STOP` writes KV events until the file STOP exists,
appending each event's uid to OUT only once its commit has returned.

    python -m topology.failover_client setup
    python -m topology.failover_client write committed.txt stop
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

APP_SLUG = "failover"
EVENTS = "events"  # the collection whose inserts fire the recording trigger
BURST = 600  # events written first, so the drain has a backlog
BATCH = 50  # events per transaction in the burst
RATE = 100.0  # events per second after the burst, each in its own transaction
RETRY_PAUSE = 0.05  # seconds between attempts while the database is away


def setup() -> dict:
    from django.contrib.auth import get_user_model

    from picloud.domain import tokens
    from picloud.models import App, AppMembership, Script, principal_for
    from triggers.pg_repository import PgTriggerRepo
    from triggers.repository import KvSpec, NewTrigger

    user = get_user_model().objects.create_user("failover", password=None)
    principal = principal_for(user)
    app = App.objects.create(slug=APP_SLUG, name="Failover drill")
    AppMembership.objects.create(app=app, principal=principal, role="admin")
    recorder = Script.objects.create(app=app, name="record", handler="failover.record")
    Script.objects.create(app=app, name="echo", handler="picloud.echo")
    PgTriggerRepo().create(
        NewTrigger(
            app_id=app.id,
            kind="kv",
            script_id=recorder.id,
            name="record-events",
            registered_by_principal=principal.id,
            kv=KvSpec(EVENTS, ("insert",)),
        )
    )
    _, token = tokens.create_token(principal, name="failover", scopes=["script:invoke"])
    return {"app": APP_SLUG, "token": token}


def write(out: Path, stop: Path) -> None:
    from django.db import DatabaseError, InterfaceError, connection, transaction

    from picloud import kv
    from picloud.models import App, AppMembership

    app = App.objects.get(slug=APP_SLUG)
    principal = AppMembership.objects.get(app=app).principal
    written = failed = attempted = 0
    with out.open("a", buffering=1) as committed:
        while not stop.exists():
            # First the burst, BATCH events a transaction (a backlog at once),
            # then one event a transaction at RATE. A new uid for every
            # attempt: a transaction whose COMMIT got no answer may have
            # committed, and must not be confused with the next one.
            size = BATCH if written < BURST else 1
            uids = [f"e{n:07d}" for n in range(attempted, attempted + size)]
            attempted += size
            try:
                with transaction.atomic():
                    for uid in uids:
                        kv.put(app, EVENTS, uid, {"uid": uid}, principal=principal)
            except (DatabaseError, InterfaceError):
                failed += 1
                connection.close()  # the next attempt connects afresh, to whichever host writes
                time.sleep(RETRY_PAUSE)
                continue
            now = time.time()  # the COMMIT returned: these uids are committed
            committed.writelines(f"{uid} {now:.6f}\n" for uid in uids)
            written += size
            if written > BURST:
                time.sleep(1 / RATE)
    print(json.dumps({"written": written, "failed": failed}))


def main(argv: list[str]) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "picloud.settings")
    import django

    django.setup()
    if argv[:1] == ["setup"]:
        print(json.dumps(setup()))
    elif argv[:1] == ["write"] and len(argv) == 3:
        write(Path(argv[1]), Path(argv[2]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
