"""The per-label-set cache on the state agent's path counts into the same children as labels()."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from agents.metrics import LabelledCounters


def test_each_label_set_counts_into_its_own_child() -> None:
    registry = CollectorRegistry()
    counter = Counter("t_events", "test", ["source", "type"], registry=registry)
    cached = LabelledCounters(counter)
    for _ in range(3):
        cached.inc("loop", "return.requested")
    cached.inc("redo", "return.requested")
    counter.labels("loop", "return.requested").inc()  # the uncached path adds to the same child

    def value(source: str) -> float | None:
        return registry.get_sample_value("t_events_total", {"source": source, "type": "return.requested"})

    assert (value("loop"), value("redo")) == (4.0, 1.0)
