"""Retention sweeps: the management commands, on real PostgreSQL."""

import io
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone

from deadletters.models import AbandonedExecution, DeadLetter
from deadletters.schedules import SCHEDULE_FUNC, SCHEDULE_NAME, ensure_schedules
from tests.factories import AppFactory, ScriptFactory

pytestmark = pytest.mark.django_db(transaction=True)

OLD_ROWS = 100_000


def insert_dead_letters(app_id, n, *, resolved_days_ago=None, created_days_ago=40):
    """n dead letters in one statement; resolved `resolved_days_ago` days ago or unresolved."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO dead_letters (app_id, source_kind, payload, last_error, errors, attempts,
                                      depth, created_at, resolution, resolved_at)
            SELECT %s, 'kv', jsonb_build_object('n', g), 'boom', '["boom"]', 3, 0,
                   NOW() - make_interval(days => %s),
                   CASE WHEN %s::int IS NULL THEN NULL ELSE 'ignored' END,
                   NOW() - make_interval(days => COALESCE(%s::int, 0))
                       * (CASE WHEN %s::int IS NULL THEN NULL ELSE 1 END)
            FROM generate_series(1, %s) AS g
            """,
            [app_id, created_days_ago, resolved_days_ago, resolved_days_ago, resolved_days_ago, n],
        )


class Out(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


def run(command, *args, tty=False):
    out = Out(tty)
    call_command(command, *args, stdout=out)
    return out.getvalue()


def test_100k_old_resolved_rows_go_in_batches_and_unresolved_stay():
    app = AppFactory()
    insert_dead_letters(app.id, OLD_ROWS, resolved_days_ago=40)
    insert_dead_letters(app.id, 50, resolved_days_ago=None)  # old but unresolved
    insert_dead_letters(app.id, 30, resolved_days_ago=2, created_days_ago=3)  # recent

    dry = run("gc_dead_letters", "--older-than", "30", "--dry-run")
    assert f"would delete {OLD_ROWS} resolved dead letters" in dry
    assert DeadLetter.objects.count() == OLD_ROWS + 80, "a dry run deletes nothing"

    out = run("gc_dead_letters", "--older-than", "30", "--batch-size", "1000", tty=True)
    assert f"Deleted {OLD_ROWS} resolved dead letters older than" in out
    bars = [line for line in out.split("\r") if line.startswith("[")]
    assert len(bars) == OLD_ROWS // 1000, "one progress update per batch of 1,000"
    assert bars[-1].splitlines()[0].endswith(f"{OLD_ROWS}/{OLD_ROWS}")
    assert DeadLetter.objects.filter(resolution__isnull=True).count() == 50
    assert DeadLetter.objects.filter(resolution__isnull=False).count() == 30


def test_no_progress_bar_when_not_on_a_terminal_and_a_one_line_summary():
    app = AppFactory()
    insert_dead_letters(app.id, 10, resolved_days_ago=40)
    out = run("gc_dead_letters", "--older-than", "30", tty=False)
    assert out.strip().count("\n") == 0 and "[" not in out
    assert out.startswith("Deleted 10 resolved dead letters")


def test_include_unresolved_deletes_old_unresolved_too():
    app = AppFactory()
    insert_dead_letters(app.id, 5, resolved_days_ago=None, created_days_ago=40)
    insert_dead_letters(app.id, 5, resolved_days_ago=None, created_days_ago=1)
    run("gc_dead_letters", "--older-than", "30")
    assert DeadLetter.objects.count() == 10, "unresolved are kept by default"
    out = run("gc_dead_letters", "--older-than", "30", "--include-unresolved")
    assert "Deleted 5 dead letters (resolved or not)" in out
    assert DeadLetter.objects.count() == 5


def test_abandoned_executions_sweep_by_age():
    app = AppFactory()
    script = ScriptFactory(app=app)
    for days in (10, 9, 1):
        AbandonedExecution.objects.create(
            app=app,
            outbox_id=app.id,
            script_id=script.id,
            inbox_id=app.id,
            status_code=200,
            created_at=timezone.now() - timedelta(days=days),
        )
    assert "would delete 2 abandoned executions" in run(
        "gc_abandoned_executions", "--older-than", "7", "--dry-run"
    )
    assert AbandonedExecution.objects.count() == 3
    assert "Deleted 2 abandoned executions" in run("gc_abandoned_executions")  # default 7 days
    assert AbandonedExecution.objects.count() == 1


@pytest.mark.parametrize("command", ["gc_dead_letters", "gc_abandoned_executions"])
@pytest.mark.parametrize(
    ("option", "value", "allowed"),
    [
        ("--older-than", "0", "an integer from 1 to 3650 (days)"),
        ("--older-than", "3651", "an integer from 1 to 3650 (days)"),
        ("--older-than", "3000000", "an integer from 1 to 3650 (days)"),
        ("--older-than", "99999999999", "an integer from 1 to 3650 (days)"),
        ("--older-than", "\u0663", "an integer from 1 to 3650 (days)"),
        ("--batch-size", "0", "an integer from 1 to 100000 (rows)"),
        ("--batch-size", "99999999999", "an integer from 1 to 100000 (rows)"),
        ("--batch-size", "1_000", "an integer from 1 to 100000 (rows)"),
    ],
)
def test_bad_arguments_say_what_is_allowed(command, option, value, allowed):
    with pytest.raises(CommandError) as excinfo:
        run(command, option, value)
    message = str(excinfo.value)
    assert option in message and repr(value) in message, message
    assert message.endswith(f"allowed is {allowed}"), message


def test_bounds_hold_for_options_given_as_keywords():
    # call_command's keyword options skip argparse: the command checks again.
    with pytest.raises(CommandError, match=r"--older-than=99999999999 .*from 1 to 3650"):
        call_command("gc_dead_letters", older_than=99999999999, stdout=io.StringIO())
    with pytest.raises(CommandError, match=r"--batch-size=0 .*from 1 to 100000"):
        call_command("gc_abandoned_executions", batch_size=0, stdout=io.StringIO())


def test_the_daily_schedule_is_created_once():
    from django_q.models import Schedule

    ensure_schedules()
    ensure_schedules()
    (schedule,) = Schedule.objects.filter(name=SCHEDULE_NAME)
    assert (schedule.func, schedule.schedule_type) == (SCHEDULE_FUNC, Schedule.DAILY)
    Schedule.objects.filter(pk=schedule.pk).update(func="something.else")
    assert "created or repaired" in run("setup_schedules")
    assert Schedule.objects.get(pk=schedule.pk).func == SCHEDULE_FUNC
    assert "already in place" in run("setup_schedules")


def test_the_scheduled_task_sweeps_with_the_configured_retention():
    from deadletters.tasks import sweep_retention

    app = AppFactory()
    insert_dead_letters(app.id, 3, resolved_days_ago=40)
    summary = sweep_retention()
    assert "Deleted 3 resolved dead letters" in summary
    assert DeadLetter.objects.count() == 0
