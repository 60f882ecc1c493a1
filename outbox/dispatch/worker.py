"""Host the engine in a process: its event-loop thread, database thread,
handler threads, the LISTEN thread that wakes it, and the thread that writes
cron ticks and queue batches.

A ``DispatcherHost`` runs in one process (each qcluster worker, see
outbox/hosting.py). Stopping it stops claiming, lets running executions
finish within the shutdown grace while their outcomes are settled, hands
the rest back, and closes every thread's connection.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections.abc import Callable

from django.db import connection, transaction

from deadletters.pg_repository import PgAbandonedRepo, PgDeadLetterRepo
from outbox.dispatch.dispatcher import Dispatcher
from outbox.dispatch.engine import Engine
from outbox.dispatch.metrics import Counters, CounterStore
from outbox.dispatch.replies import InboxReplySink
from outbox.dispatch.sources_thread import QUEUE_CHANNEL, SourcesThread
from outbox.dispatch.wakeup import CHANNEL
from outbox.storage.pg_circuits import PgCircuitRepo
from outbox.storage.pg_delivery_log import PgDeliveryLog
from outbox.storage.pg_repository import PgCounterStore, PgOutboxRepo, PgReplyInbox
from picloud.config import DispatcherConfig, PoolerConfig, SandboxCeiling
from picloud.db.dbthreads import DbThreads
from picloud.db.pgconn import listen_connector
from picloud.db.pglisten import Listener
from picloud.runtime.async_execution import AsyncRunner
from picloud.runtime.handler_threads import HandlerThreads
from picloud.runtime.webhook_client import WebhookClient
from triggers import cron
from triggers.pg_repository import PgTriggerRepo
from triggers.queue_batches import PgBatchStore

logger = logging.getLogger("picloud.dispatcher")

# The engine's database work goes to one thread: claims and settles are
# serial anyway (each claim acknowledges the last one's successes), and one
# connection keeps a process's count fixed (docs/dispatcher.md).
ENGINE_DB_THREADS = 1
SWITCH_INTERVAL = 0.0005  # seconds a thread may hold the GIL while others wait (default 0.005)


def prepare_connection() -> None:
    """Set up the engine's connection each time it is (re)opened.

    The dispatcher's own writes (claims, acknowledgements, reschedules,
    dead letters) commit without waiting for the WAL flush: if PostgreSQL
    crashes and loses the last few, those rows simply run again, which
    at-least-once delivery allows anyway. Event sources and scripts write
    on other connections, with the server's durable default.

    Not through a transaction-mode pooler: the setting would stay on a
    server connection that other clients' transactions (KV writes) use
    next, and leave ours; the dispatcher's commits stay durable there.
    """
    if not PoolerConfig.current().session_state_kept:
        return
    with connection.cursor() as cursor:
        cursor.execute("SET synchronous_commit TO off")


class DispatcherHost:
    def __init__(
        self,
        *,
        make_dispatcher: Callable[..., Dispatcher],
        connect_listener: Callable | None,  # None: no LISTEN, poll (picloud/db/pglisten.py)
        counter_store: CounterStore,
        webhooks: WebhookClient,
        config: DispatcherConfig | None = None,
        ceiling: SandboxCeiling | None = None,
    ) -> None:
        self.config = config or DispatcherConfig.current()
        ceiling = ceiling or SandboxCeiling.current()
        self.counters = Counters()
        self.stopping = threading.Event()
        # Cron ticks and queue batches: one thread and connection for both.
        self.sources = SourcesThread(self.stopping, self.counters)
        self.db = DbThreads(ENGINE_DB_THREADS, on_connect=prepare_connection)
        self.threads = HandlerThreads(self.config.handler_threads)
        self.engine = Engine(
            dispatcher=make_dispatcher(
                counters=self.counters,
                should_stop=self.stopping.is_set,
                on_batch_settled=self.sources.wake,
            ),
            runner=AsyncRunner(ceiling, threads=self.threads, post=webhooks.post),
            db=self.db,
            counters=self.counters,
            counter_store=counter_store,
            stopping=self.stopping,
            config=self.config,
            ceiling=ceiling,
        )
        self.listener = Listener(
            CHANNEL,
            what="outbox rows",
            connect=connect_listener,
            # Rows may have arrived while nobody listened: look once on connect.
            on_connect=self._wake_all,
            on_notify=lambda _payload: self.engine.wake(),
            stop=self.stopping,
            also={QUEUE_CHANNEL: self.sources.wake},
        )
        self.webhooks = webhooks
        self.thread = threading.Thread(
            target=asyncio.run, args=(self._serve(),), name="picloud-engine", daemon=True
        )

    def _wake_all(self) -> None:
        self.engine.wake()
        self.sources.wake()

    async def _serve(self) -> None:
        try:
            await self.engine.main()
        finally:
            await self.webhooks.close()  # the pooled connections, on their own loop

    def start(self) -> None:
        # The engine's threads wait on PostgreSQL and on each other; when an
        # answer arrives, the waiting thread must get the GIL back from a
        # handler thread that may be busy. Python's default 5 ms switch
        # interval would make every such hand-over wait that long behind
        # busy threads (the "convoy effect").
        sys.setswitchinterval(SWITCH_INTERVAL)
        self.thread.start()
        self.engine.ready.wait(10)
        self.listener.start()
        self.sources.start()
        logger.info(
            "dispatcher started: up to %d executions in flight, %d handler threads",
            self.config.max_in_flight,
            self.config.handler_threads,
        )

    def stop(self, grace: float | None = None) -> None:
        """Stop claiming; wait up to the grace (plus the time to settle) for running rows."""
        grace = self.config.shutdown_grace_ms / 1000 if grace is None else grace
        self.stopping.set()
        self.engine.wake()
        # The engine itself hands back what is still running at its grace;
        # this bound only guards against a database that does not answer.
        self.thread.join(grace + 10.0)
        if self.thread.is_alive():
            logger.warning(
                "dispatch engine still running after %.1fs; its rows return when the lease ends",
                grace,
            )
        self.threads.close()
        self.listener.join(2.0)
        self.sources.join(2.0)
        self.db.close()
        logger.info("dispatcher stopped")


def postgres_dispatcher(
    *, counters: Counters | None = None, config: DispatcherConfig | None = None, **kwargs
) -> Dispatcher:
    """A Dispatcher wired to the PostgreSQL repositories, as each worker
    process builds it (tests and tools drive its run_once)."""
    config = config or DispatcherConfig.current()
    counters = counters or Counters()
    return Dispatcher(
        outbox=PgOutboxRepo(),
        triggers=PgTriggerRepo(),
        dead_letters=PgDeadLetterRepo(),
        replies=InboxReplySink(PgReplyInbox(), PgAbandonedRepo(), counters),
        atomic=transaction.atomic,
        counters=counters,
        circuits=PgCircuitRepo(),
        overlaps=cron.overlaps,
        batches=PgBatchStore(),
        lease_margin=config.lease_margin_ms / 1000,
        **{"delivery_log": PgDeliveryLog(), **kwargs},
    )


def postgres_host(config: DispatcherConfig | None = None) -> DispatcherHost:
    """A host wired to the PostgreSQL repositories."""

    config = config or DispatcherConfig.current()

    def make_dispatcher(*, counters: Counters, **kwargs) -> Dispatcher:
        return postgres_dispatcher(counters=counters, config=config, **kwargs)

    return DispatcherHost(
        make_dispatcher=make_dispatcher,
        connect_listener=listen_connector(),
        counter_store=PgCounterStore(),
        webhooks=WebhookClient(),
        config=config,
    )
