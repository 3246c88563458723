"""`returnsync dev`, the README's first command, brings the whole stack up and syncs the demo,
with a status line (totals, rates, lag, backlog) that says what happened."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

from agents.devstack.broker import free_port
from streams.demo import demo_events

CUSTOMERS = 30

# The status line as `agents.devstack.stack.status_line` writes it; rates are "-/s" until known.
_RATE = r"(?:-|\d+(?:\.\d)?)"
STATUS = re.compile(
    rf"ingested (?P<ingested>\d+) \((?P<ingested_rate>{_RATE})/s\)  "
    rf"delivered (?P<delivered>\d+) \((?P<delivered_rate>{_RATE})/s\)  "
    r"lag (?P<lag>\d+) \((?P<lag_seconds>\d+\.\d)s\)  backlog (?P<backlog>\d+)  "
    r"dead letters (?P<dead_letters>\d+)  "
    rf"webhooks (?P<webhooks_rate>{_RATE})/s  klaviyo (?P<klaviyo_rate>{_RATE}) req/s"
)


def dev_command(tmp_path: Path) -> tuple[list[str], dict[str, str], int]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("KAFKA_BOOTSTRAP_SERVERS", "KLAVIYO_API_KEY")
    }
    env.update({"RETURNSYNC_DATA_DIR": str(tmp_path), "RETURNSYNC_PARTITIONS": "2"})
    web_port, sandbox_port = free_port(), free_port()
    command = [
        sys.executable, "-m", "agents.commands.cli", "dev", "--customers", str(CUSTOMERS),
        "--exit-when-synced",
        "--web-port", str(web_port), "--sandbox-port", str(sandbox_port),
    ]
    return command, env, web_port


def rate(value: str) -> float | None:
    return None if value == "-" else float(value)


def test_dev_stack_syncs_demo_traffic_and_stops_cleanly(tmp_path: Path) -> None:
    command, env, web_port = dev_command(tmp_path)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "all demo events are in Klaviyo" in output, output[-3000:]
    assert f"http://127.0.0.1:{web_port}/customers/" in output
    assert "stopping: worker, sandbox, broker" in output
    assert "Traceback" not in output, output[-3000:]

    # Not a terminal: plain lines, no carriage returns or escapes, and no per-request log lines.
    status_lines = [line for line in done.stderr.splitlines() if line.startswith("ingested ")]
    assert status_lines, done.stderr[-3000:]
    for line in status_lines:
        assert STATUS.fullmatch(line), line
    assert "\x1b[" not in done.stderr
    assert "/metrics" not in done.stderr, "the status loop's scrapes must not be logged"

    # The last line is the one printed when everything was in Klaviyo.
    last = STATUS.fullmatch(status_lines[-1])
    assert last is not None
    events = len(demo_events(CUSTOMERS))
    assert int(last["ingested"]) == events, status_lines
    assert int(last["delivered"]) >= events, status_lines
    assert int(last["dead_letters"]) == 0, status_lines
    assert int(last["lag"]) >= 0 and float(last["lag_seconds"]) >= 0
    assert int(last["backlog"]) >= 0
    # This scrape is the first with everything delivered and its baseline was taken earlier
    # (before the demo traffic at the latest), so the delivery and request rates are known
    # and positive; nothing posts webhooks in the demo.
    delivered_rate, klaviyo_rate = rate(last["delivered_rate"]), rate(last["klaviyo_rate"])
    assert delivered_rate is not None and delivered_rate > 0, status_lines
    assert klaviyo_rate is not None and klaviyo_rate > 0, status_lines
    assert rate(last["webhooks_rate"]) == 0, status_lines
    ingested_rate = rate(last["ingested_rate"])
    assert ingested_rate is not None and ingested_rate >= 0, status_lines

    # Totals never go backwards from one line to the next.
    matches = [STATUS.fullmatch(line) for line in status_lines]
    for key in ("ingested", "delivered"):
        values = [int(match[key]) for match in matches if match]
        assert values == sorted(values), (key, status_lines)


def test_on_a_terminal_the_status_line_rewrites_itself_in_place_within_the_width(tmp_path: Path) -> None:
    command, env, _ = dev_command(tmp_path)
    env.pop("COLUMNS", None)
    primary, secondary = pty.openpty()
    columns = 90
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(primary, 65536)
            except OSError:  # EIO: every writer closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=secondary) as process:
        os.close(secondary)
        reader.start()
        stdout, _ = process.communicate(timeout=300)
    reader.join(10)
    os.close(primary)
    terminal = b"".join(chunks).decode(errors="replace")
    assert process.returncode == 0, terminal[-3000:] + stdout.decode()[-3000:]

    # Each update: carriage return, the line, erase to the end of the terminal line.
    updates = re.findall(r"\r(ingested [^\r\n\x1b]*)\x1b\[K", terminal)
    assert updates, terminal[-3000:]
    for line in updates:
        assert len(line) < columns, line
        assert line.startswith("ingested ") and "delivered " in line and " lag " in line, line
    assert "backlog " in updates[-1], updates[-1]  # fits in 90 columns at demo sizes
    # The status never scrolls: no newline between updates, one at the end.
    between = terminal[terminal.index("\ringested ") : terminal.rindex("\x1b[K")]
    assert "\n" not in between, between[-2000:]
