"""Start a real `manage.py qcluster` against the test database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.helpers import PROJECT_DIR, subprocess_env, wait_for

# Fast retries and short leases so the tests run in seconds.
ACCEPTANCE_ENV = {
    "PICLOUD_EXTRA_APPS": "tests.acceptance",
    "PICLOUD_QCLUSTER_WORKERS": "2",
    "PICLOUD_TRIGGER_RETRY_MAX_ATTEMPTS": "3",
    "PICLOUD_TRIGGER_RETRY_BASE_DELAY_MS": "300",
    "PICLOUD_TRIGGER_RETRY_MAX_DELAY_MS": "5000",
    "PICLOUD_TRIGGER_RETRY_JITTER": "0",
    "PICLOUD_SANDBOX_TIMEOUT_MS": "5000",
    "PICLOUD_DISPATCHER_LEASE_MARGIN_MS": "1000",
    "PICLOUD_LOG_LEVEL": "INFO",
}


class Cluster:
    def __init__(self, settings_dict: dict, log_path: Path, **env: str) -> None:
        self.log_path = log_path
        self.env = subprocess_env(settings_dict, **{**ACCEPTANCE_ENV, **env})
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> Cluster:
        with self.log_path.open("a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "manage.py", "qcluster"],
                cwd=PROJECT_DIR,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # our signals reach the cluster, not pytest
            )
        workers = int(self.env["PICLOUD_QCLUSTER_WORKERS"])
        try:
            wait_for(
                lambda: self.log().count("listening for outbox rows") >= workers,
                timeout=timeout,
                what=f"{workers} dispatchers listening (log: {self.log_path})",
            )
        except BaseException:
            # __exit__ does not run when __enter__ fails: leave no cluster behind.
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 60, *, may_hang: bool = False) -> int:
        """SIGTERM and wait. `may_hang`: after a worker was SIGKILLed, django-q2's
        other workers can be stuck on the task queue's lock the dead process held
        (docs/dispatcher.md): the cluster then stops only when PICLOUD_STOP_GRACE_MS
        ends, killing them; if `timeout` is shorter, kill it here instead."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                if may_hang:
                    return self.proc.returncode
                raise AssertionError(
                    f"qcluster did not stop on SIGTERM:\n{self.log()[-3000:]}"
                ) from None
        return self.proc.returncode if self.proc else 0

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
