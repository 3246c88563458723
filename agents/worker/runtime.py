"""What every processor, view and task of a worker is handed: settings, the Faust app, its topics
and table, the Kafka connection. A leaf: it imports no processor, so processors never import the
app that wires them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import faust
from faust.exceptions import ConsumerNotStarted
from faust.types import TableT, TopicT

from agents.kafka import KafkaConnection
from agents.settings import Settings
from agents.topic_plan import rekey_topic, sync_topic
from agents.worker.lag import Progress


@dataclass
class Runtime:
    """Everything an agent or a view needs, built once per worker."""

    settings: Settings
    app: faust.App
    kafka: KafkaConnection
    events: TopicT  # returns.events plus the re-key topic
    rekey: TopicT
    sync: TopicT
    deadletter: TopicT
    raw: TopicT
    table: TableT[bytes, bytes]
    progress: Progress = field(default_factory=Progress)
    sync_assigned: bool = False
    """The sync consumer (agents/worker/deliver.py) is in its group with its version floors loaded."""

    @property
    def rekey_topic_name(self) -> str:
        return rekey_topic(self.settings)

    @property
    def sync_topic_name(self) -> str:
        return sync_topic(self.settings)

    def ready(self) -> bool:
        """Partitions assigned, every table recovered and the sync consumer in its group:
        processing and delivering, not catching up or joining.

        The sync consumer counts because a rolling restart moves on when /ready answers: a
        worker stopped while another's sync consumer is still joining makes the group rebalance
        again (and on the embedded broker a leader leaving then can stall the group for minutes).
        """
        app = self.app
        recovery: Any = app.tables.recovery  # type: ignore[attr-defined]
        try:
            assigned = bool(app.consumer.assignment()) if app.consumer else False
        except ConsumerNotStarted:  # the web server listens before the consumer thread has started
            return False
        return (assigned and not app.rebalancing and not recovery.in_recovery
                and recovery.completed.is_set()
                and (self.sync_assigned or not self.settings.delivery_enabled))
