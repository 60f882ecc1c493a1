"""A trigger's health in admin: on the list, when it last succeeded and
failed, its success rate and p95 duration over 24 hours and its circuit;
on its page, its recent attempts with links into the delivery log.

Everything comes from the delivery log's rollups (trigger_hours) and its
indexes, a few queries for the whole page, whatever the log's size. The
p95 is read off a histogram's buckets: "≤ 250 ms" means the 95th
percentile fell in the bucket ending at 250 ms.
"""

from __future__ import annotations

from django.contrib import admin
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from outbox.admin_log import attempts_url
from outbox.models import ScriptCircuit
from outbox.storage import delivery_reads as reads
from outbox.storage.circuits import OPEN, CircuitState
from outbox.storage.delivery_reads import Health
from triggers.models import Trigger

RECENT = 10  # attempts on a trigger's page


def attach_health(triggers: list[Trigger]) -> None:
    """Read the page's triggers' health and circuits at once, onto each."""
    health = reads.trigger_health([t.pk for t in triggers])
    circuits = {
        c.script_id: c
        for c in ScriptCircuit.objects.filter(script_id__in={t.script_id for t in triggers})
    }
    for trigger in triggers:
        trigger.health = health.get(trigger.pk, Health())
        trigger.circuit = circuits.get(trigger.script_id)


def _health(obj: Trigger) -> Health:
    if not hasattr(obj, "health"):
        attach_health([obj])
    return obj.health


class TriggerHealthColumns:
    """List columns and a page field of a trigger's health (a ModelAdmin mixin)."""

    @admin.display(description="last success")
    def last_success(self, obj: Trigger) -> str:
        at = _health(obj).last_success_at
        return f"{timezone.localtime(at):%Y-%m-%d %H:%M:%S}" if at else "—"

    @admin.display(description="last failure")
    def last_failure(self, obj: Trigger) -> str:
        at = _health(obj).last_failure_at
        if at is None:
            return "—"
        return format_html(
            '<a href="{}">{}</a>',
            attempts_url(trigger=obj.pk, result="failed"),
            f"{timezone.localtime(at):%Y-%m-%d %H:%M:%S}",
        )

    @admin.display(description="success (24 h)")
    def success_rate(self, obj: Trigger) -> str:
        health = _health(obj)
        rate = health.success_rate
        if rate is None:
            return "—"
        total = health.succeeded + health.failed
        return f"{rate:.1%} of {total:,}"

    @admin.display(description="p95 (24 h)")
    def p95(self, obj: Trigger) -> str:
        bound = _health(obj).p95_ms
        if bound is None:
            return "—"
        return "> 30 s" if bound < 0 else f"≤ {bound:,} ms"

    @admin.display(description="circuit")
    def circuit(self, obj: Trigger) -> str:
        if not hasattr(obj, "circuit"):
            attach_health([obj])
        c = obj.circuit
        if c is None:
            return "closed"
        state = CircuitState(
            c.script_id, c.app_id, c.failures, c.opened, c.open_until, c.last_error
        ).state(timezone.now())
        if state == OPEN:
            return f"open until {timezone.localtime(c.open_until):%H:%M:%S}"
        return state

    @admin.display(description="recent attempts")
    def recent_attempts(self, obj: Trigger) -> str:
        if obj.pk is None:
            return "—"
        rows = reads.attempts(reads.AttemptFilter(apps=None, trigger_id=obj.pk), limit=RECENT).rows
        links = format_html(
            '<p><a href="{}" id="trigger-attempts">all attempts</a> · '
            '<a href="{}" id="trigger-failed-attempts">failed attempts</a></p>',
            attempts_url(trigger=obj.pk),
            attempts_url(trigger=obj.pk, result="failed"),
        )
        if not rows:
            return format_html("<p>No attempts logged.</p>{}", links)
        body = format_html_join(
            "",
            "<tr><td>{}</td><td><a href='{}'>{}</a></td><td>{}</td><td>{}</td><td>{}</td>"
            "<td>{}</td><td>{}</td></tr>",
            (
                (
                    f"{timezone.localtime(r['started_at']):%Y-%m-%d %H:%M:%S}",
                    attempts_url(outbox_id=r["outbox_id"]),
                    str(r["outbox_id"])[:8],
                    r["attempt"],
                    r["outcome"],
                    r["disposition"],
                    r["duration_ms"],
                    r["detail"][:120],
                )
                for r in rows
            ),
        )
        return format_html(
            "<table class='recent-attempts'><thead><tr><th>started</th><th>row</th>"
            "<th>attempt</th><th>outcome</th><th>then</th><th>ms</th><th>answer or error</th>"
            "</tr></thead><tbody>{}</tbody></table>{}",
            body,
            links,
        )
