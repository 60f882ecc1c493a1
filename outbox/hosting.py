"""django-q2 wiring: every qcluster worker process also runs a dispatcher.

django-q2 sends ``post_spawn`` in each worker process it starts (and in each
replacement after a crash or recycle); we start a DispatcherHost there, and
stop it gracefully when the process exits (cluster shutdown sends each worker
a stop pill, and multiprocessing runs its finalizers on the way out).
"""

from __future__ import annotations

import logging
from multiprocessing import util

from django_q.signals import post_spawn

from outbox.dispatch.worker import postgres_host
from picloud.config import DispatcherConfig

logger = logging.getLogger("picloud.dispatcher")

_host = None


def start_dispatcher(sender=None, proc_name: str = "", **kwargs) -> None:
    global _host
    config = DispatcherConfig.current()
    if not config.enabled or _host is not None:
        return

    _host = postgres_host(config=config)
    _host.start()
    logger.info(
        "%s hosts the outbox dispatcher (up to %d in flight)", proc_name, config.max_in_flight
    )
    util.Finalize(None, _host.stop, exitpriority=100)


def connect() -> None:

    post_spawn.connect(start_dispatcher, dispatch_uid="picloud-dispatcher")
