from benchmarks import probe
from picloud.domain.scripts import handler


@handler("bench.noop")
def noop(event, ctx):
    # Only latency rows report their start: throughput rows are timed by the
    # outbox emptying, so they do the nothing that the raw floor does.
    if event.get("probe"):
        probe.hit(event["n"])


@handler("bench.cron_probe")
def cron_probe(event, ctx):
    # A tick reports its start against its scheduled time.
    probe.hit(f"tick|{event['trigger_id']}|{event['scheduled_at']}")


@handler("bench.start_probe")
def start_probe(event, ctx):
    # A publish (its message) or a KV write (the new value) reports its tag
    # the moment a subscriber starts: benchmarks/queues.py keeps each tag's first.
    probe.hit((event.get("message") or event.get("new") or {})["tag"])
