"""State growth: fold cost per event and stored state size for one customer with a long history.

    .venv/bin/python benchmarks/state_history.py --history 10,1000,3000,50000

Pure, no broker. For each N, one serial returner's N events (`streams.demo.serial_returner_events`:
hundreds of lifecycles over years, redeliveries, local reordering) are folded the way the state
agent folds them: decode the stored state, `apply_event`, encode it again. The cost is measured
over the last events of the history (where a long history hurts), the size is the bytes of
`encode_state` after all N.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

from streams.codec import decode_state, encode_state
from streams.demo import serial_returner_events
from streams.reducer import apply_event

MEASURED_TAIL = 300
"""Events at the end of the history the fold cost is averaged over."""


def history_row(events: int, seed: int = 7) -> tuple[int, float, int]:
    """(events measured, microseconds per event at the end, bytes of the final state)."""
    history = serial_returner_events("sam.returner@returnsync-demo.com", events, seed)
    split = max(0, len(history) - MEASURED_TAIL)
    stored: bytes | None = None
    state = None
    for event in history[:split]:  # reach the long state quickly: no codec round trip per event
        state = apply_event(state, event).state
    stored = encode_state(state) if state is not None else None
    tail = history[split:]
    started = time.perf_counter()
    for event in tail:
        stored = encode_state(apply_event(decode_state(stored), event).state)
    elapsed = time.perf_counter() - started
    return len(tail), elapsed / max(len(tail), 1) * 1e6, len(stored or b"")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--history", default="10,1000,3000,50000",
                        help="comma-separated event counts, one row each")
    parser.add_argument("--seed", type=int, default=7)
    options = parser.parse_args()
    counts = [int(part) for part in options.history.split(",") if part.strip()]
    print(f"machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
          f"Python {platform.python_version()}")
    print(f"{'events in history':>18}{'fold us/event':>15}{'events/s':>10}{'state bytes':>13}  (measured)")
    for count in counts:
        measured, micros, size = history_row(count, options.seed)
        rate = 1e6 / micros if micros else 0.0
        print(f"{count:>18,}{micros:>15,.0f}{rate:>10,.0f}{size:>13,}  ({measured})")


if __name__ == "__main__":
    main()
