"""The delivered-version floor: per customer, the highest state version written to Klaviyo.

Why a floor is needed at all, given that sync records of one customer sit in one partition in
version order: (1) after a crash the redelivered records are re-batched differently, so an older
record that was coalesced away the first time can now be sent on its own, after the newer one
already reached Klaviyo; (2) a state-agent worker that lost its partitions but still runs (a
zombie) can append an older record after a newer one; (3) a bulk profile import is applied by
Klaviyo later, asynchronously, so a newer single write must not overtake it.

So before any profile write its version is recorded here (and, in production, on a compacted
topic before the request goes out); a record whose version is below the floor has its profile
write dropped. A bulk write also records its job id: until that job is known to be complete, a
newer write for the same customer waits for it. This module is the in-memory store; the Kafka
backed one (highwater.py) persists the same marks for the next owner of a partition.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Floor:
    version: int
    job: str | None = None
    """The bulk import job carrying this version, until it is known to be complete."""


class VersionStore(Protocol):
    def floor(self, customer_key: str) -> Floor | None: ...

    def job_complete(self, job_id: str) -> bool: ...

    async def record(self, marks: Sequence[tuple[str, Floor]]) -> None:
        """Durably note that these versions are about to be (or were) written."""

    async def completed(self, job_id: str, customer_keys: Iterable[str]) -> None:
        """Note that a bulk job's writes have all been applied (or refused)."""


class MemoryVersions:
    """Floors for one process. Enough for tests, the benchmark and a single worker's lifetime."""

    def __init__(self) -> None:
        self._floors: dict[str, Floor] = {}
        self._complete: set[str] = set()

    def floor(self, customer_key: str) -> Floor | None:
        return self._floors.get(customer_key)

    def job_complete(self, job_id: str) -> bool:
        return job_id in self._complete

    def version(self, customer_key: str) -> int:
        found = self._floors.get(customer_key)
        return found.version if found is not None else 0

    def mark(self, customer_key: str, floor: Floor) -> None:
        """Floors only rise. At an equal version, a job id replaces none but never the reverse:
        the same state written again must not hide a bulk job still pending."""
        current = self._floors.get(customer_key)
        if current is None or floor.version > current.version or (
            floor.version == current.version and floor.job is not None
        ):
            self._floors[customer_key] = floor

    def mark_complete(self, job_id: str) -> None:
        self._complete.add(job_id)

    def forget(self, customer_keys: Iterable[str]) -> None:
        for key in customer_keys:
            self._floors.pop(key, None)

    async def record(self, marks: Sequence[tuple[str, Floor]]) -> None:
        for key, floor in marks:
            self.mark(key, floor)

    async def completed(self, job_id: str, customer_keys: Iterable[str]) -> None:
        self.mark_complete(job_id)
