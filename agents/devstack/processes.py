"""Child processes of the local stack: a worker or a sandbox, started, awaited, stopped.

Shared by `returnsync dev`, the integration tests and the benchmarks, so all three run the
worker exactly as production does: `returnsync worker` with its configuration in the environment.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import httpx


class ChildProcess:
    def __init__(
        self, args: list[str], env: Mapping[str, str], log_file: Path, *, command: list[str] | None = None
    ) -> None:
        """`args` go to `returnsync`; `command`, when given, is run instead (benchmark baselines)."""
        self.args = args
        self.command = command or [sys.executable, "-m", "agents.commands.cli", *args]
        self.env = {**os.environ, **env}
        self.log_file = log_file
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ChildProcess:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as output:
            self.process = subprocess.Popen(
                self.command,
                env=self.env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
            )
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_http(self, url: str, *, within: float = 60.0, status: int = 200) -> None:
        """Wait until `url` answers `status`; fail with the child's log tail if it never does."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"{self.command[-1]} exited early:\n{self.log_tail()}")
            try:
                if httpx.get(url, timeout=2.0).status_code == status:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{url} did not answer {status} within {within:.0f}s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to commit or flush."""
        if self.process is not None and self.running:
            self.process.kill()
            self.process.wait(10)

    def stop(self, within: float = 30.0) -> None:
        if self.process is None or not self.running:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(within)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def __enter__(self) -> ChildProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def worker_env(
    *,
    bootstrap_servers: str,
    klaviyo_url: str,
    klaviyo_key: str,
    app_id: str,
    web_port: int,
    data_dir: Path,
    partitions: int = 4,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of a local worker: short session timeouts so restarts rejoin quickly."""
    return {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers,
        "KLAVIYO_BASE_URL": klaviyo_url,
        "KLAVIYO_API_KEY": klaviyo_key,
        "RETURNSYNC_APP_ID": app_id,
        "RETURNSYNC_WEB_PORT": str(web_port),
        "RETURNSYNC_WEB_HOST": "127.0.0.1",
        "RETURNSYNC_DATA_DIR": str(data_dir),
        "RETURNSYNC_PARTITIONS": str(partitions),
        "RETURNSYNC_STANDBY_REPLICAS": "0",
        "RETURNSYNC_SESSION_TIMEOUT": "10",
        "RETURNSYNC_SYNC_BATCH_SECONDS": "0.2",
        "RETURNSYNC_DEV": "1",
        "RETURNSYNC_LOG_FORMAT": "text",  # read by people (and the tests' log checks)
        **(extra or {}),
    }
