"""The chaos run's ledger, gathered from the database and written as Markdown."""

from __future__ import annotations

import collections
from datetime import datetime

from .ledger import Execution, Ledger, tally
from .workload import SLUG, expected_ticks


def collect(connection, tenant, producers, faults, paused_at: float) -> tuple[Ledger, dict]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT uid, script, source FROM chaos_produced")
        produced = [tuple(row) for row in cursor.fetchall()]
        cursor.execute("SELECT uid, script, pid, at FROM chaos_executions")
        executions = [Execution(*row) for row in cursor.fetchall()]
        cursor.execute(
            "SELECT count(*) FILTER (WHERE source_kind = 'kv' AND payload->>'collection' = 'doomed'),"
            " count(*) FROM dead_letters d JOIN apps a ON a.id = d.app_id WHERE a.slug = %s",
            [SLUG],
        )
        designed, dead_letters = cursor.fetchone()
        cursor.execute(
            "SELECT (SELECT count(*) FROM outbox), (SELECT count(*) FROM queue_messages)"
        )
        stuck_rows, stuck_messages = cursor.fetchone()
        cursor.execute("SELECT count(*) FROM abandoned_executions")
        abandoned = cursor.fetchone()[0]
    for producer in producers:
        produced += producer.counts.confirmed
    produced += [(uid, "cron_tick", "cron") for uid in expected_ticks(tenant, paused_at)]
    ledger = tally(produced, executions, faults.log)
    ledger.dead_letters, ledger.designed_dead_letters = dead_letters, designed
    ledger.stuck_rows, ledger.stuck_messages = stuck_rows, stuck_messages
    refused = collections.Counter()
    for producer in producers:
        refused.update(producer.counts.statuses)
    facts = {
        "produced": ledger.produced,
        "by_source": ledger.by_source,
        "executions": len(executions),
        "executed_once": ledger.executed_once,
        "executed_more_than_once": ledger.executed_more,
        "extra_runs": ledger.extra_runs,
        "explained": ledger.explained,
        "unexplained": len(ledger.unexplained),
        "lost": len(ledger.lost),
        "lost_examples": ledger.lost[:10],
        "unexplained_examples": ledger.unexplained[:10],
        "unconfirmed_runs": ledger.unconfirmed_runs,
        "dead_letters": dead_letters,
        "designed_dead_letters": designed,
        "stuck_rows": stuck_rows,
        "stuck_messages": stuck_messages,
        "abandoned_executions": abandoned,
        "refused_while_faulty": dict(refused),
        "duplicates_by_fault": ledger.duplicates_by_fault,
        "faults": len(faults.log),
    }
    return ledger, facts


INTRO = """# Reliability: the chaos run

PiCloud runs every event at least once. This page shows it under the
faults production brings: processes killed with `kill -9`, nodes stopped
and added while rows drain, every database session ended at once, and
PostgreSQL restarted, fast and immediately (crash recovery). `make chaos`
makes this page; CI runs a one-minute version (`make chaos-short`) on every
change and fails on a ledger that is not clean.

## What runs

- A private PostgreSQL cluster (initdb; `fsync` and `synchronous_commit` on),
  the web server (gunicorn), the SMTP receiver and three `qcluster` nodes of
  two workers each, all with one `DATABASE_URL`; nodes that exit are started
  again, as systemd would.
- One app with a trigger of every kind: KV writes (`orders`), a KV
  collection whose script always fails (`doomed`) and the dead-letter
  trigger that handles what it leaves, two subscribers of one topic, a queue
  trigger (batches of up to 50, ten at once), an email trigger (mail through the SMTP
  receiver), a cron trigger every two seconds (catch-up `all`) and
  synchronous invocations over HTTP.
- Producers write through the same doors tenants use (the Python API, SMTP,
  HTTP) while a fault happens every few seconds, the kinds in turn.
- Every execution appends a row to a ledger table before its handler
  returns; an event written through the Python API is noted in the same
  transaction as the event, so exactly the events that committed count as
  produced. Mail counts once the receiver answered 250, an invocation once
  it answered 200.

## How the ledger is read

- **Lost**: an event produced (committed, or confirmed to the client) with
  no execution. Must be 0. For cron: a tick due between the trigger's
  creation and its pause with no execution.
- **Executed more than once**: at-least-once delivery means a row whose
  execution's outcome was not recorded runs again. Each extra execution
  must be explained by a fault that came after the first execution started
  and before the second: one that ended the first execution's node or
  process, or one that ended every session (terminated, or a restart).
  Handlers that must not repeat a side effect key it by `ctx.outbox_id`
  (docs/dispatcher.md).
- **Dead letters**: only the designed ones, the failing script's events,
  each handled by the dead-letter trigger.
- **Stuck**: outbox rows or queue messages left once the leases and
  back-offs of the last faults have ended. Must be 0.
- **Writes refused while a fault was on** are not events: the caller was
  told (a database error, SMTP 451, HTTP 503/504, or HTTP 500 when the
  invoked script itself failed because its session was ended) and would
  retry.
- **Executions of writes the client was not told had committed**: an
  invocation whose caller gave up (504) still ran (recorded as an abandoned
  execution), and a message whose 250 was lost with the connection was
  still stored and run.

"""


def _row(*cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def render(
    ledger: Ledger,
    facts: dict,
    *,
    faults,
    args,
    started: datetime,
    produced_until,
    drained,
    machine,
) -> str:
    command = (
        f"make chaos  (python -m topology.chaos --seconds {args.seconds:g} --rate {args.rate:g} "
        f"--fault-every {args.fault_every:g} --seed {args.seed})"
    )
    lines = [
        INTRO.rstrip(),
        "",
        "## The last run",
        "",
        f"- Command: `{command}`",
        f"- Machine: {machine}",
        f"- Date: {started:%Y-%m-%d %H:%M} UTC; producers and faults ran "
        f"{(produced_until - started).total_seconds():.0f} s, then the drain took "
        + (
            f"{drained:.1f} s."
            if drained is not None
            else "no end: rows stopped moving (see stuck)."
        ),
        f"- Verdict: **{'clean' if ledger.ok else 'NOT clean'}** — {ledger.produced:,} events produced, "
        f"{len(ledger.lost)} lost, {ledger.stuck_rows + ledger.stuck_messages} stuck, "
        f"{ledger.extra_runs - ledger.explained} duplicates unexplained.",
        "",
        "### Ledger",
        "",
        _row("", "events"),
        _row("---", "---:"),
        _row("produced (committed, or confirmed to the client)", f"{ledger.produced:,}"),
        *[
            _row(f"&nbsp;&nbsp;{source}", f"{n:,}")
            for source, n in sorted(ledger.by_source.items())
        ],
        _row("executed once", f"{ledger.executed_once:,}"),
        _row("executed more than once", f"{ledger.executed_more:,}"),
        _row("&nbsp;&nbsp;extra executions", f"{ledger.extra_runs:,}"),
        _row("&nbsp;&nbsp;each explained by a fault at that time", f"{ledger.explained:,}"),
        _row("lost", f"**{len(ledger.lost)}**"),
        _row(
            "dead letters (designed: the failing script's events)",
            f"{ledger.dead_letters} ({ledger.designed_dead_letters})",
        ),
        _row("stuck outbox rows after the drain", f"**{ledger.stuck_rows}**"),
        _row("stuck queue messages after the drain", f"**{ledger.stuck_messages}**"),
        _row(
            "executions of writes the client was not told had committed",
            f"{ledger.unconfirmed_runs:,}",
        ),
        _row("abandoned synchronous executions (caller gone)", facts["abandoned_executions"]),
        "",
        "Duplicates by the fault that explains them: "
        + (", ".join(f"{k} {v}" for k, v in sorted(ledger.duplicates_by_fault.items())) or "none")
        + ".",
        "",
        "Writes refused while a fault was on (the producers went on; a refused write is not an event): "
        + (
            ", ".join(f"{k} {v}" for k, v in sorted(facts["refused_while_faulty"].items()))
            or "none"
        )
        + ".",
        "",
        "Database connections held under load, by process group: "
        + ", ".join(f"{k} {v}" for k, v in facts.get("database_connections", {}).items())
        + ".",
        "",
        "### Faults",
        "",
        _row("at (s)", "fault"),
        _row("---:", "---"),
        *[_row(f"{(f.at - started).total_seconds():.1f}", f.detail) for f in faults.log],
        "",
    ]
    if faults.errors:
        lines += ["Faults that could not be applied: " + "; ".join(faults.errors), ""]
    return "\n".join(lines)
