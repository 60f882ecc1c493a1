"""Write the drill's events through PiCloud's Python API, as a web node of
either release does: ``python -m upgrade_drill.producer <command>`` from
the release's directory.

  setup                        the app, its scripts, topic, queue and triggers
  burst PREFIX COUNT           write COUNT events and print their ids (JSON)
  live PREFIX STOP_FILE OUT    write events until STOP_FILE exists, appending
                               the id of each to OUT (a line each) once committed

Events go round four sources: a KV write run by drill.record, a KV write
run by drill.flaky, a publish and a queue message; each event's id is
what its handler records (upgrade_drill.handlers).
"""

import functools
import json
import os
import sys
import time
from pathlib import Path

import django

APP_SLUG = "drill"
SOURCES = ("kv", "flaky", "pubsub", "queue")
LIVE_PAUSE = 0.02  # seconds between live events: about 50 events a second at most


def _setup() -> None:
    from django.contrib.auth import get_user_model

    from picloud.domain.authz import Role
    from picloud.messaging import queues, topics
    from picloud.models import App, AppMembership, Script, principal_for
    from triggers.pg_repository import PgTriggerRepo
    from triggers.repository import KvSpec, NewTrigger, PubsubSpec, QueueSpec

    user = get_user_model().objects.create_user("drill")
    principal = principal_for(user)
    app = App.objects.create(slug=APP_SLUG, name="Rolling upgrade drill")
    AppMembership.objects.create(app=app, principal=principal, role=Role.AppAdmin.value)
    scripts = {
        name: Script.objects.create(app=app, name=name, handler=f"drill.{name}")
        for name in ("record", "flaky", "batch")
    }
    topics.create_topic(app, "news", principal=principal)
    queue = queues.create_queue(app, "jobs", principal=principal)

    def trigger(kind, script, **details):
        return NewTrigger(
            app_id=app.pk,
            kind=kind,
            script_id=scripts[script].pk,
            name=f"{kind}-{script}",
            registered_by_principal=principal.pk,
            **details,
        )

    repo = PgTriggerRepo()
    repo.create(trigger("kv", "record", kv=KvSpec("orders", ("insert",))))
    # A retry two seconds after a failed first attempt: retries of rows
    # the old node failed may fall to the new node.
    repo.create(
        trigger(
            "kv",
            "flaky",
            kv=KvSpec("flaky", ("insert",)),
            max_attempts=5,
            retry_base_delay_ms=2000,
            retry_max_delay_ms=2000,
        )
    )
    repo.create(trigger("pubsub", "record", pubsub=PubsubSpec("news")))
    repo.create(
        trigger("queue", "batch", queue=QueueSpec(queue.id, batch_size=10, max_batch_wait_ms=200))
    )


@functools.cache
def _writer():
    from picloud.models import App, AppMembership

    app = App.objects.get(slug=APP_SLUG)
    return app, AppMembership.objects.get(app=app).principal


def _write(prefix: str, n: int) -> str:
    """Write event n (committed when this returns); the id its handler records."""
    from picloud import kv
    from picloud.messaging import queues, topics

    app, principal = _writer()
    source, ident = SOURCES[n % len(SOURCES)], f"{prefix}-{n}"
    body = {"id": ident, "written_at": time.time()}
    if source == "kv":
        kv.put(app, "orders", ident, body, principal=principal)
    elif source == "flaky":
        kv.put(app, "flaky", ident, body, principal=principal)
    elif source == "pubsub":
        topics.publish(app, "news", body, principal=principal)
    else:
        queues.send(app, "jobs", body, principal=principal)
    return f"{source}:{ident}"


def main(argv: list[str]) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "picloud.settings")
    django.setup()
    command, *args = argv
    if command == "setup":
        _setup()
    elif command == "burst":
        prefix, count = args[0], int(args[1])
        print(json.dumps([_write(prefix, n) for n in range(count)]))
    elif command == "live":
        prefix, stop_file, out = args[0], Path(args[1]), Path(args[2])
        n = 0
        with out.open("a") as ids:
            while not stop_file.exists():
                print(_write(prefix, n), file=ids, flush=True)
                n += 1
                time.sleep(LIVE_PAUSE)
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
