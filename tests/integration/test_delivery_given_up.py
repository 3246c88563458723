"""A batch given up (revocation, stop) never sends a bulk profile import afterwards.

Seen in the deployment tier: a bulk import waited 53 s for its endpoint's budget; the batch was
given up on a rebalance, the partition came back, and the newer batch's import and the orphaned
older one went out 3 ms apart. Klaviyo applied the older state last. An import already sent still
runs to the end, so its job id is recorded (delivery.py); one that was not sent yet never is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from agents.klaviyo.accounts import KlaviyoAccount
from agents.klaviyo.channels import Channel, Channels
from agents.klaviyo.delivery import Delivery
from agents.klaviyo.versions import MemoryVersions
from agents.settings import Settings
from streams.demo import demo_events
from streams.projection import ProjectionConfig
from tests.agents.klaviyo.test_delivery_plan import sync_records
from tests.integration.harness import SANDBOX_KEY, SandboxThread

BULK = "/api/profile-bulk-import-jobs"


@pytest.fixture
def sandbox() -> Iterator[SandboxThread]:
    running = SandboxThread(rate_limit_scale=0).start()
    yield running
    running.stop()


def bulk_imports(sandbox: SandboxThread) -> int:
    return sum(1 for r in sandbox.admin("GET", "requests") if r["method"] == "POST" and r["path"] == BULK)


async def give_up_a_batch_waiting_for_its_turn(sandbox: SandboxThread) -> Delivery:
    account = KlaviyoAccount("default", SANDBOX_KEY, sandbox.url)
    channels = Channels(lambda tenant: account,
                        lambda account: Channel(account, revision=Settings().klaviyo_revision))

    async def dead_letter(key: str, record: bytes) -> None:
        raise AssertionError(f"nothing is refused here, yet {key} was dead-lettered")

    delivery = Delivery(channels, ProjectionConfig(), dead_letter, MemoryVersions())
    channel = channels.for_tenant("default")
    budgets = channel.client.budgets
    # No single imports left (so the batch goes bulk) and the bulk endpoint blocked, as by a
    # Retry-After: the import waits for its turn.
    single, bulk = budgets.get("profile-import"), budgets.get("profile-bulk-import-jobs")
    assert single is not None and bulk is not None
    single.block_for(3600)
    bulk.block_for(1.0)
    submitted = asyncio.ensure_future(delivery.submit(sync_records(demo_events(30, seed=4))))
    for _ in range(500):  # up to 5 s for the import to be waiting on the bulk endpoint's budget
        if delivery._recording_jobs:
            break
        await asyncio.sleep(0.01)
    assert delivery._recording_jobs, "the batch never reached its bulk import"
    submitted.cancel()  # revocation: the batch is given up
    with pytest.raises(asyncio.CancelledError):
        await submitted
    await delivery.quiesce(within=5.0)  # outlasts the block: the import has had its turn
    await channels.aclose()
    return delivery


def test_a_bulk_import_not_yet_sent_is_never_sent_once_its_batch_is_given_up(sandbox: SandboxThread) -> None:
    delivery = asyncio.run(give_up_a_batch_waiting_for_its_turn(sandbox))
    assert not delivery._recording_jobs, "the given-up import finished (without sending)"
    assert bulk_imports(sandbox) == 0, "an import sent after its batch was given up"
