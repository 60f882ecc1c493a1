"""The SMTP door: an aiosmtpd server that takes mail for the apps.

A recipient is refused at RCPT TO (550) unless it fires an enabled email
trigger of the app it names; a message over PICLOUD_EMAIL_MAX_BYTES is
refused at DATA (552, and advertised with SIZE beforehand). ``250`` is
answered only after picloud.mail.inbound.receive committed the message
and its outbox rows: a client that got it can forget the message. A
database failure answers 451, which clients retry later. Database work runs
on threads of its own (Django's connections are per thread), never on the
event loop that serves every connection; recipients are checked on other
threads than messages are parsed and stored on, so slow messages never
hold up the RCPT of others.
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
from aiosmtpd.smtp import SMTP
from django.db import close_old_connections, connection

from picloud.config import EmailConfig
from picloud.mail import inbound

logger = logging.getLogger("picloud.smtp")

RCPT_THREADS = 2  # recipients checked at once; each thread holds a database connection
DATA_THREADS = 2  # messages parsed and stored at once; each holds a connection too
# Lines of a message up to this long are taken (RFC 5321 says 1,000, but
# generated mail exceeds it, and refusing it would bounce the sender's mail).
LINE_LIMIT = 65_536  # bytes
IDLE_TIMEOUT = 300  # seconds a connection may sit silent (RFC 5321 § 4.5.3.2)

ACCEPTED = "250 2.1.5 OK"
STORED = "250 2.0.0 OK: stored"
NO_MAILBOX = "550 5.1.1 No such mailbox here"
TOO_MANY = f"452 4.5.3 Too many recipients: at most {inbound.MAX_RECIPIENTS} a message"
TOO_LARGE = "552 5.3.4 Message too big for this system"
TRY_LATER = "451 4.3.0 Temporary failure storing the message; try again later"


class MailHandler:
    """aiosmtpd's handler: what each SMTP command does with the database."""

    def __init__(
        self, config: EmailConfig, rcpt: ThreadPoolExecutor, data: ThreadPoolExecutor
    ) -> None:
        self.config, self.rcpt, self.data = config, rcpt, data

    @staticmethod
    async def _db(threads: ThreadPoolExecutor, fn, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(
            threads, partial(_with_fresh_connection, fn, *args, **kwargs)
        )

    async def handle_RCPT(self, server, session, envelope, address: str, rcpt_options) -> str:
        if len(envelope.rcpt_tos) >= inbound.MAX_RECIPIENTS:
            return TOO_MANY
        try:
            recipient = await self._db(self.rcpt, inbound.accepts, address, config=self.config)
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
                self.data,
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
        if not stored:
            # Its apps were deleted since RCPT TO: nothing was stored, so no 250.
            return NO_MAILBOX
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


class _Smtp(SMTP):
    line_length_limit = LINE_LIMIT


class _Controller(Controller):
    def factory(self) -> SMTP:
        return _Smtp(self.handler, **self.SMTP_kwargs)


class SmtpReceiver:
    """The server, on its own thread and event loop: start(), then stop()."""

    def __init__(self, config: EmailConfig | None = None) -> None:
        self.config = config or EmailConfig.current()
        self.pools = {
            "rcpt": ThreadPoolExecutor(RCPT_THREADS, thread_name_prefix="smtp-rcpt"),
            "data": ThreadPoolExecutor(DATA_THREADS, thread_name_prefix="smtp-data"),
        }
        self.controller = _Controller(
            MailHandler(self.config, self.pools["rcpt"], self.pools["data"]),
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
        _close_connections(self.pools["rcpt"], RCPT_THREADS)
        _close_connections(self.pools["data"], DATA_THREADS)


def _close_connections(pool: ThreadPoolExecutor, threads: int) -> None:
    """Each thread closes its own connection (Django's are per thread): one
    job per thread, held at a barrier until all have one; then the pool ends."""
    barrier = threading.Barrier(threads)

    def close() -> None:
        try:
            barrier.wait(timeout=5)
        finally:
            connection.close()

    for _ in range(threads):
        pool.submit(close)
    pool.shutdown(wait=True)
