"""Topic names (SPEC §2). Producers and operators depend on these; internal topics follow Faust."""

from __future__ import annotations

from dataclasses import dataclass

RAW = "returns.raw"
EVENTS = "returns.events"
DEADLETTER = "returns.deadletter"


@dataclass(frozen=True, slots=True)
class TopicNames:
    raw: str
    events: str
    deadletter: str

    @classmethod
    def with_prefix(cls, prefix: str) -> TopicNames:
        return cls(raw=prefix + RAW, events=prefix + EVENTS, deadletter=prefix + DEADLETTER)
