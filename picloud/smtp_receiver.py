"""The SMTP door: an aiosmtpd server that takes mail for the apps.

A recipient is refused at RCPT TO (550) unless it fires an enabled email
trigger of the app it names; a message over PICLOUD_EMAIL_MAX_BYTES is
refused at DATA (552, and advertised with SIZE beforehand). ``250`` is
answered only after picloud.mail.inbound.receive committed the message
and its outbox rows: a client that got it can forget the message. A
database failure answers 451, which clients retry later. Database work runs
on a few threads of its own (Django's connections are per thread), never on
the event loop that serves every connection.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from aiosmtpd.controller import Controller
from django.db import close_old_connections, connection

from picloud.config import EmailConfig
from picloud.mail import inbound

logger = logging.getLogger("picloud.smtp")

DB_THREADS = 4  # messages stored at once; each thread holds a database connection
IDLE_TIMEOUT = 300  # seconds a connection may sit silent (RFC 5321 § 4.5.3.2)

ACCEPTED = "250 2.1.5 OK"
STORED = "250 2.0.0 OK: stored"
NO_MAILBOX = "550 5.1.1 No such mailbox here"
TOO_MANY = f"452 4.5.3 Too many recipients: at most {inbound.MAX_RECIPIENTS} a message"
TOO_LARGE = "552 5.3.4 Message too big for this system"
TRY_LATER = "451 4.3.0 Temporary failure storing the message; try again later"


class MailHandler:
    """aiosmtpd's handler: what each SMTP command does with the database."""

    def __init__(self, config: EmailConfig, threads: ThreadPoolExecutor) -> None:
        self.config, self.threads = config, threads

    async def _db(self, fn, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(
            self.threads, partial(_with_fresh_connection, fn, *args, **kwargs)
        )

    async def handle_RCPT(self, server, session, envelope, address: str, rcpt_options) -> str:
        if len(envelope.rcpt_tos) >= inbound.MAX_RECIPIENTS:
            return TOO_MANY
        try:
            recipient = await self._db(inbound.accepts, address, config=self.config)
        except Exception:
            logger.exception("smtp: checking a recipient failed; answered 451")
            return TRY_LATER
        if recipient is None:
            return NO_MAILBOX
        envelope.rcpt_tos.append(address)
        return ACCEPTED

    async def handle_DATA(self, server, session, envelope) -> str:
        raw = envelope.original_content or b""
        peer = _peer(session.peer)
        try:
            stored = await self._db(
                inbound.receive,
                _sender(envelope.mail_from),
                list(envelope.rcpt_tos),
                raw,
                peer=peer,
                config=self.config,
            )
        except inbound.MessageTooLarge:
            return TOO_LARGE
        except Exception:
            # Nothing was stored (one transaction): the client keeps the
            # message and tries again.
            logger.exception("smtp: storing a message from %s failed; answered 451", peer)
            return TRY_LATER
        logger.info(
            "smtp: stored %d bytes from %s for %s; %d trigger(s) fired",
            len(raw),
            peer,
            ", ".join(s.app_slug for s in stored) or "no app",
            sum(len(s.fired) for s in stored),
        )
        return STORED


def _with_fresh_connection(fn, *args, **kwargs):
    # As Django does around each request: a connection broken by the last
    # call (the database restarted) is dropped, and the next opens anew.
    close_old_connections()
    try:
        return fn(*args, **kwargs)
    finally:
        close_old_connections()


def _sender(mail_from: str | None) -> str:
    # MAIL FROM:<> (a bounce) arrives as "<>": stored as the empty sender.
    return "" if mail_from in (None, "<>") else mail_from


def _peer(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer or "")


def tls_context(config: EmailConfig) -> ssl.SSLContext | None:
    """The STARTTLS context when a certificate is configured; OSError or
    ssl.SSLError when its files cannot be loaded."""
    if not config.tls_cert:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # TLS 1.2 at least, no client certificates
    context.load_cert_chain(config.tls_cert, config.tls_key)
    return context


class SmtpReceiver:
    """The server, on its own thread and event loop: start(), then stop()."""

    def __init__(self, config: EmailConfig | None = None) -> None:
        self.config = config or EmailConfig.current()
        self.threads = ThreadPoolExecutor(DB_THREADS, thread_name_prefix="smtp-db")
        self.controller = Controller(
            MailHandler(self.config, self.threads),
            hostname=self.config.smtp_host,
            port=self.config.smtp_port,
            server_hostname=self.config.domain,
            ident="PiCloud",
            data_size_limit=self.config.max_bytes,
            tls_context=tls_context(self.config),
            timeout=IDLE_TIMEOUT,
        )

    @property
    def port(self) -> int:
        """The port it listens on (the one the OS chose for port 0)."""
        server = self.controller.server
        return server.sockets[0].getsockname()[1] if server else self.config.smtp_port

    def start(self) -> None:
        """Listen; OSError (address in use...) when it cannot."""
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()
        # Each thread closes its own connection (Django's are per thread):
        # one job per thread, held at a barrier until all have one.
        barrier = threading.Barrier(DB_THREADS)

        def close() -> None:
            try:
                barrier.wait(timeout=5)
            finally:
                connection.close()

        for _ in range(DB_THREADS):
            self.threads.submit(close)
        self.threads.shutdown(wait=True)
