"""Django settings for PiCloud.

Everything an operator sets comes from the environment (django-environ).
DATABASE_URL selects the database; without it an embedded PostgreSQL is
started under .pgdata/ (see picloud/db/embedded.py).

Numbers, booleans and levels go through picloud.config's validators, like
the PICLOUD_* configs: a bad value raises ConfigError, which manage.py prints
as one line. They are read first, so a bad one stops start-up before any
database is started.
"""

import os
import sys
import warnings
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

from picloud.config import ConfigError, PoolerConfig, env_bool, env_choice, env_int
from picloud.db import hostlist

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DEBUG = env_bool(os.environ, "DJANGO_DEBUG", True)
# At most 64: each worker process holds PostgreSQL connections (one per dispatch
# loop), and the server's default max_connections is 100.
QCLUSTER_WORKERS = env_int(os.environ, "PICLOUD_QCLUSTER_WORKERS", 2, low=1, high=64)
LOG_LEVEL = env_choice(os.environ, "PICLOUD_LOG_LEVEL", "INFO", choices=LOG_LEVELS)
# What stands between us and PostgreSQL (docs/operations.md, "Connection pooling").
POOLER = PoolerConfig.from_env()

SECRET_KEY = env.str(
    "DJANGO_SECRET_KEY",
    # Only good for local development; production must set DJANGO_SECRET_KEY.
    default="picloud-insecure-development-key-set-DJANGO_SECRET_KEY-in-production",
)
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost"])
# Behind the TLS-terminating proxy that docs/api.md ("Serving it") puts in
# front of gunicorn: trust its X-Forwarded-Proto, or Django takes every
# request for plain HTTP and the admin login's origin check refuses it.
BEHIND_TLS_PROXY = env_bool(os.environ, "DJANGO_BEHIND_TLS_PROXY", False)
if BEHIND_TLS_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    # Before django_q: its `qcluster` command replaces django-q2's (the first
    # app that has a command wins), see picloud/management/commands/qcluster.py.
    "picloud",
    "django_q",
    "triggers",
    "outbox",
    "deadletters",
    # More Django apps, e.g. ones that register script handlers in their
    # handlers.py: PICLOUD_EXTRA_APPS=myproject.orders,myproject.billing
    *env.list("PICLOUD_EXTRA_APPS", default=[]),
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "picloud.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        # The project's admin/base_site.html (branding, the dead-letter badge)
        # must win over django.contrib.admin's own.
        "DIRS": [BASE_DIR / "picloud" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "deadletters.context_processors.dead_letter_badge",
            ],
        },
    },
]

WSGI_APPLICATION = "picloud.wsgi.application"
ASGI_APPLICATION = "picloud.asgi.application"


DATABASE_URL_FORM = (
    "postgres://user:pass@host:port/db, or for failover "
    "postgres://user:pass@host1:port1,host2:port2/db?target_session_attrs=read-write"
)
# libpq waits for ever on a host that does not answer: a dead primary of a
# failover list would hang every new connection (docs/operations.md, "Failover").
DEFAULT_CONNECT_TIMEOUT = 5  # seconds per host tried


def _database_url() -> dict:
    # Neither the message nor a warning shows the URL: it may hold a password.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Engine not recognized", with the password
            db = env.db_url("DATABASE_URL")
    except ValueError:
        # Not urllib's words: they can quote a piece of the password (one
        # with an unencoded '/' is read as the port).
        raise ConfigError(
            "DATABASE_URL is not valid (a port that is not a number from 1 to 65535, or "
            "a password with '/', '?', '#' or '@' not percent-encoded): "
            f"allowed is {DATABASE_URL_FORM}"
        ) from None
    try:
        hostlist.check(os.environ["DATABASE_URL"])
    except ValueError as exc:  # our own words: they name no part of the URL
        raise ConfigError(
            f"DATABASE_URL is not valid ({exc}): allowed is {DATABASE_URL_FORM}"
        ) from None
    if db.get("ENGINE") != "django.db.backends.postgresql" or not db.get("NAME"):
        raise ConfigError(
            "DATABASE_URL is not valid (not a PostgreSQL URL naming a database): "
            f"allowed is {DATABASE_URL_FORM}"
        )
    db.setdefault("OPTIONS", {}).setdefault("connect_timeout", DEFAULT_CONNECT_TIMEOUT)
    return db


def _database() -> dict:
    if "DATABASE_URL" in os.environ:
        db = _database_url()
        hosts = ", ".join(hostlist.pairs(db)) if db.get("HOST") else "local socket"
        where = f"PostgreSQL at {hosts}/{db['NAME']}"
    else:
        from picloud.db.embedded import DEFAULT_PGDATA, ensure_running

        db = ensure_running()
        where = f"embedded PostgreSQL (data in {DEFAULT_PGDATA.name}/, socket {db['HOST']})"
    # Announce once per process tree: children (autoreloader, qcluster
    # workers) inherit the marker and stay quiet.
    if not os.environ.get("PICLOUD_DATABASE_ANNOUNCED"):
        os.environ["PICLOUD_DATABASE_ANNOUNCED"] = "1"
        print(f"picloud: database: {where}", file=sys.stderr)
    db.setdefault("CONN_MAX_AGE", 0)
    return db


def _for_pooler(db: dict) -> dict:
    """Under a transaction-mode pooler (PICLOUD_DATABASE_POOLER=transaction)
    each transaction may run on another server connection: a prepared
    statement or a server-side cursor (a WITH HOLD cursor, in Django's
    autocommit) made on one would be missing on the next."""
    if not POOLER.session_state_kept:
        db["DISABLE_SERVER_SIDE_CURSORS"] = True
        db.setdefault("OPTIONS", {})["prepare_threshold"] = None
    return db


DATABASES = {"default": _for_pooler(_database())}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "static"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# django-q2 hosts the dispatcher loops and the daily sweeps; it is not the
# per-row transport (see docs/decisions.md).
Q_CLUSTER = {
    "name": "picloud",
    "orm": "default",
    "workers": QCLUSTER_WORKERS,
    "timeout": 600,  # seconds a task may run before the cluster kills it
    "retry": 900,  # seconds before an unacknowledged task is re-delivered; > timeout
    "catch_up": False,
    "max_attempts": 1,
    "save_limit": 100,
    "ack_failures": True,
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    # aiosmtpd logs every SMTP command at INFO (addresses included): ours says what matters.
    "loggers": {"pgserver": {"level": "WARNING"}, "mail.log": {"level": "WARNING"}},
}

# Mail the apps' scripts send (ctx.email; docs/email.md) leaves through
# Django's email backend, configured by one URL: smtp://user:pass@host:25,
# smtp+tls://...:587 (STARTTLS), smtp+ssl://...:465, or consolemail:// (the
# default: printed by the process that delivers it, for a laptop).
EMAIL_URL_FORM = "smtp://user:pass@host:port, smtp+tls://, smtp+ssl:// or consolemail://"


def _email_settings() -> dict:
    # Neither the message nor a warning shows the URL or the parser's words
    # about it: either may quote a password.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            url = os.environ.get("EMAIL_URL", "").strip() or "consolemail://"
            email = env.email_url_config(url)
    except (ValueError, ImproperlyConfigured):
        raise ConfigError(
            f"EMAIL_URL is not valid (a scheme it does not know, or a malformed host, port "
            f"or password: percent-encode '#', '/', '?' and '@' in it): allowed is {EMAIL_URL_FORM}"
        ) from None
    if email["EMAIL_BACKEND"] == "django.core.mail.backends.smtp.EmailBackend":
        # The same backend, keeping which recipients the server refused.
        email["EMAIL_BACKEND"] = "picloud.mail.delivery.SmtpBackend"
    return email


globals().update(_email_settings())
