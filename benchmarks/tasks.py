"""The same noop work for the peers: a django-q2 function and a procrastinate task."""

from benchmarks import probe


def django_q_noop(n):
    probe.hit(n)


try:
    from procrastinate.contrib.django import app as procrastinate_app
except ImportError:  # procrastinate is a benchmark-only dependency
    procrastinate_app = None

if procrastinate_app is not None:

    @procrastinate_app.task(name="bench.procrastinate_noop")
    def procrastinate_noop(n):
        probe.hit(n)
