from benchmarks import probe
from picloud.scripts import handler


@handler("bench.noop")
def noop(event, ctx):
    probe.hit(event.get("n", "-"))
