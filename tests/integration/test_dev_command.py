"""`returnsync dev`, the README's first command, brings the whole stack up and syncs the demo."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from agents.broker import free_port


def test_dev_stack_syncs_demo_traffic_and_stops_cleanly(tmp_path: Path) -> None:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("KAFKA_BOOTSTRAP_SERVERS", "KLAVIYO_API_KEY")
    }
    env.update({"RETURNSYNC_DATA_DIR": str(tmp_path), "RETURNSYNC_PARTITIONS": "2"})
    web_port, sandbox_port = free_port(), free_port()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "agents.cli",
            "dev",
            "--customers",
            "30",
            "--exit-when-synced",
            "--web-port",
            str(web_port),
            "--sandbox-port",
            str(sandbox_port),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "all demo events are in Klaviyo" in output, output[-3000:]
    assert f"http://127.0.0.1:{web_port}/customers/" in output
    assert "stopping: worker, sandbox, broker" in output
    assert "Traceback" not in output, output[-3000:]
