"""Serving behind a buffering proxy: runstack's warning and docs/api.md's recipe.

gunicorn's gthread workers read request headers blocking and have no setting
that bounds that read, so slow clients are kept away by a proxy in front,
with gunicorn bound to localhost.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from io import StringIO

import pytest
from django.core.management import call_command
from gunicorn.config import Config

from picloud.config import SandboxCeiling, SyncConfig
from picloud.management.commands.runstack import exposed_bind_warning
from tests.helpers import PROJECT_DIR


@pytest.mark.parametrize(
    "addr",
    [
        "0.0.0.0:8000",
        "[::]:8000",
        ":8000",
        "tcp://0.0.0.0:8000",
        "192.168.1.5:8000",
        "picloud.example.com:80",
    ],
)
def test_an_address_other_hosts_reach_gets_a_warning(addr):
    warning = exposed_bind_warning(addr)
    assert warning is not None, f"{addr} is reachable from other hosts"
    assert addr in warning and "docs/api.md" in warning and "127.0.0.1" in warning


@pytest.mark.parametrize(
    "addr",
    [
        "127.0.0.1:8000",
        "127.0.0.2:9000",
        "[::1]:8000",
        "localhost:8000",
        "unix:/run/picloud.sock",
        "fd://3",
        "127.0.0.1:notaport",  # gunicorn refuses it itself
    ],
)
def test_a_local_address_gets_no_warning(addr):
    assert exposed_bind_warning(addr) is None


class _Started(Exception):
    """Raised instead of starting a child process."""


def _runstack_output(monkeypatch, addr: str) -> str:
    def popen(*args, **kwargs):
        raise _Started

    monkeypatch.setattr(subprocess, "Popen", popen)
    stderr = StringIO()
    with pytest.raises(_Started):
        call_command("runstack", addr=addr, stdout=StringIO(), stderr=stderr)
    return stderr.getvalue()


def test_runstack_warns_before_serving_on_a_public_address(monkeypatch):
    output = _runstack_output(monkeypatch, "0.0.0.0:8000")
    assert "warning: serving on 0.0.0.0:8000" in output, output
    assert "docs/api.md" in output
    assert _runstack_output(monkeypatch, "127.0.0.1:8000") == ""


def _serving_section() -> str:
    text = (PROJECT_DIR / "docs" / "api.md").read_text()
    match = re.search(r"^## Serving it\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, "docs/api.md has no 'Serving it' section"
    return match.group(1)


def _code_block(language: str) -> str:
    blocks = re.findall(rf"```{language}\n(.*?)```", _serving_section(), re.S)
    assert len(blocks) == 1, f"'Serving it' should show one {language} block, found {len(blocks)}"
    return blocks[0]


def _gunicorn_recipe():
    (line,) = [ln for ln in _code_block("sh").splitlines() if ln.startswith("gunicorn ")]
    return Config().parser().parse_args(shlex.split(line)[1:])


def _nginx_directives() -> dict[str, list[str]]:
    directives: dict[str, list[str]] = {}
    for line in _code_block("nginx").splitlines():
        match = re.match(r"\s*(\w+)\s+([^;{]+);", line.split("#", 1)[0])
        if match:
            directives.setdefault(match.group(1), []).append(match.group(2).strip())
    return directives


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m)?", value)
    assert match, f"not an nginx time: {value!r}"
    return int(match.group(1)) * {"ms": 0.001, "s": 1, None: 1, "m": 60}[match.group(2)]


def test_the_documented_gunicorn_binds_to_localhost_with_threads():
    recipe = _gunicorn_recipe()
    assert recipe.worker_class == "gthread"
    (bind,) = recipe.bind
    assert bind.startswith("127.0.0.1:"), f"gunicorn must listen on localhost only, not {bind}"
    assert exposed_bind_warning(bind) is None
    assert "0.0.0.0" not in _serving_section()


def test_the_documented_proxy_buffers_and_bounds_slow_clients():
    nginx = _nginx_directives()
    (bind,) = _gunicorn_recipe().bind
    assert nginx["proxy_pass"] == [f"http://{bind}"], "the proxy must reach the documented bind"
    assert nginx["proxy_request_buffering"] == ["on"]
    assert nginx["proxy_buffering"] == ["on"]
    for name in ("client_header_timeout", "client_body_timeout"):
        (value,) = nginx[name]
        assert _seconds(value) <= 30, f"{name} {value} is too long to keep slow clients out"
    (read_timeout,) = nginx["proxy_read_timeout"]
    assert _seconds(read_timeout) * 1000 > SyncConfig().timeout_ms, (
        "proxy_read_timeout must outlast PICLOUD_SYNC_TIMEOUT_MS, or callers get the proxy's 504"
    )
    assert nginx["client_max_body_size"] == [str(SandboxCeiling().max_payload_bytes)], (
        "client_max_body_size must match PICLOUD_SANDBOX_MAX_PAYLOAD_BYTES"
    )
