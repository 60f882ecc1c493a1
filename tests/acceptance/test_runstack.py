"""`manage.py runstack` (what `make run` ends with) serves admin and runs qcluster."""

import signal
import subprocess
import sys
import urllib.request

import pytest
from django.db import connection

from tests.helpers import PROJECT_DIR, free_port, subprocess_env, wait_for

pytestmark = [pytest.mark.acceptance, pytest.mark.django_db(transaction=True)]


def _status(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except OSError:
        return None


def test_runstack_serves_admin_login_and_runs_the_cluster(tmp_path):
    port = free_port()
    log_path = tmp_path / "runstack.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "runstack", "--addr", f"127.0.0.1:{port}"],
            cwd=PROJECT_DIR,
            env=subprocess_env(connection.settings_dict),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(
            lambda: _status(f"http://127.0.0.1:{port}/admin/login/") == 200,
            timeout=60,
            what="the admin login page",
        )
        wait_for(
            lambda: "Q Cluster" in log_path.read_text() and "running" in log_path.read_text(),
            timeout=60,
            what="qcluster's 'running' log line",
        )
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    output = log_path.read_text()
    assert "has stopped" in output, f"the cluster should stop on Ctrl-C:\n{output}"
