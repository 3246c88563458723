"""State growth: fold cost per event and stored state size for one customer with a long history.

    .venv/bin/python benchmarks/state_history.py --history 10,1000,3000,50000
    .venv/bin/python benchmarks/state_history.py --history 10,3000 --open 5

Pure, no broker. For each N, one serial returner's N events (`streams.demo.serial_returner_events`:
hundreds of lifecycles over years, redeliveries, local reordering) are folded the way the state
agent folds them: `apply_event`, encode the state again, with the state kept decoded between
events as the agent's cache keeps a recent customer's (`agents.worker.fold.DecodedStates`); and
also decoding the stored state for every event, as after a cache miss. The cost is measured over
the last events of the history (where a long history hurts), the size is the bytes of
`encode_state` after all N. Times are CPU time of this process, so other work on the machine
does not inflate them, and the fastest of a few runs is kept.

The generator leaves about one return in eight open for ever, and open returns are kept in full.
`--open K` keeps only the newest K of them (the others' events are left out, as if those returns
never happened), the shape of issue 10's size target: 3,000 events with 5 open returns.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from datetime import UTC, datetime

from streams.codec import decode_state, encode_state
from streams.demo import serial_returner_events
from streams.events import ReturnEvent
from streams.reducer import apply_event, reduce_events

_NEVER = datetime.min.replace(tzinfo=UTC)
MEASURED_TAIL = 300
"""Events at the end of the history the fold cost is averaged over."""


def serial_history(events: int, seed: int, open_returns: int | None) -> list[ReturnEvent]:
    """About `events` events of one serial returner (a few more at most, a lifecycle is not cut),
    with at most `open_returns` returns left open: the newest."""
    email = "sam.returner@returnsync-demo.com"
    if open_returns is None:
        return serial_returner_events(email, events, seed)

    def generated(count: int) -> list[ReturnEvent]:
        history = serial_returner_events(email, count, seed)
        state = reduce_events(history)
        still_open = sorted((record.opened_at or _NEVER, return_id)
                            for return_id, record in (state.returns.items() if state else ())
                            if record.active)
        dropped = {return_id for _, return_id in still_open[:max(0, len(still_open) - open_returns)]}
        return [event for event in history if event.return_id not in dropped]

    low, high = events, 4 * events  # the fewest generated events whose kept part has `events`
    while low < high:
        middle = (low + high) // 2
        if len(generated(middle)) >= events:
            high = middle
        else:
            low = middle + 1
    return generated(low)


def history_row(
    events: int, seed: int = 7, open_returns: int | None = None
) -> tuple[int, int, float, float, int]:
    """(events in the history, events measured, microseconds per event at the end with the state
    kept decoded, the same decoding it every event, bytes of the final state)."""
    history = serial_history(events, seed, open_returns)
    split = max(0, len(history) - MEASURED_TAIL)
    state = None
    for event in history[:split]:  # reach the long state quickly: no codec round trip per event
        state = apply_event(state, event).state
    start = encode_state(state) if state is not None else None
    tail = history[split:]

    def fold_tail(decode_every_event: bool) -> tuple[float, bytes | None]:
        stored, decoded = start, decode_state(start)
        started = time.process_time()
        for event in tail:
            decoded = apply_event(decode_state(stored) if decode_every_event else decoded, event).state
            stored = encode_state(decoded)
        return (time.process_time() - started) / max(len(tail), 1) * 1e6, stored

    # The fastest of a few runs (more for a short history): what the fold costs, not what the
    # machine's other work cost it.
    runs = max(3, MEASURED_TAIL // max(len(tail), 1))
    cached, stored = min(fold_tail(decode_every_event=False) for _ in range(runs))
    uncached = min(fold_tail(decode_every_event=True)[0] for _ in range(runs))
    return len(history), len(tail), cached, uncached, len(stored or b"")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--history", default="10,1000,3000,50000",
                        help="comma-separated event counts, one row each")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--open", type=int, default=None, dest="open_returns",
                        help="keep only the newest K open returns (default: as generated)")
    options = parser.parse_args()
    counts = [int(part) for part in options.history.split(",") if part.strip()]
    print(f"machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
          f"Python {platform.python_version()}")
    print(f"{'events in history':>18}{'fold us/event':>15}{'events/s':>10}{'decoding each':>15}"
          f"{'state bytes':>13}  (measured)")
    for count in counts:
        total, measured, cached, uncached, size = history_row(count, options.seed, options.open_returns)
        rate = 1e6 / cached if cached else 0.0
        print(f"{total:>18,}{cached:>15,.0f}{rate:>10,.0f}{uncached:>12,.0f} us{size:>13,}  ({measured})")


if __name__ == "__main__":
    main()
