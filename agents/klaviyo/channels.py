"""One channel per Klaviyo account: its client, rate budget, auth pause and bulk jobs.

Tenants sharing an API key (and base URL) share a channel, because Klaviyo's limits belong to
the account. The key stays inside the client's Authorization header; logs and metrics name the
account by the tenant it was configured for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import httpx

from agents import metrics
from agents.klaviyo.accounts import KlaviyoAccount
from agents.klaviyo.client import KlaviyoClient, RetryPolicy
from agents.klaviyo.jobs import JobTracker
from agents.klaviyo.ratelimit import KLAVIYO_LIMITS, Budgets, Limit
from agents.settings import Settings

log = logging.getLogger(__name__)

# Klaviyo's limits belong to the account, not to a Channels: every Channels built from settings
# in one process (a worker's sync agent and its scheduled reconcile) spends one budget per
# account and rate scale.
_SHARED_BUDGETS: dict[tuple[str, str, float], Budgets] = {}
# ... and to the fleet, not to a worker: this process's share of them (set_fleet_share).
_fleet_share = 1.0


def _account_budgets(account: KlaviyoAccount, scale: float) -> Budgets:
    key = (account.api_key, account.base_url, scale)
    if key not in _SHARED_BUDGETS:
        _SHARED_BUDGETS[key] = Budgets(scale=scale, share=_fleet_share)
    return _SHARED_BUDGETS[key]


def set_fleet_share(assigned: int, total: int) -> float:
    """This worker owns `assigned` of the sync topic's `total` partitions: from now on every
    budget of the process plans for that share of its account's limits (ratelimit.py says how a
    change takes effect), so that the sync group's members together plan for the account's
    limits once. A member assigned nothing keeps one partition's share, so that its scheduled
    reconcile still runs: with more members than partitions, reconciles may overrun a little."""
    global _fleet_share
    share = min(1.0, max(1, assigned) / total)
    if share != _fleet_share:
        log.info("klaviyo budget share=%.3f (%d of %d sync partitions)", share, assigned, total)
    _fleet_share = share
    for budgets in _SHARED_BUDGETS.values():
        budgets.set_share(share)
    metrics.KLAVIYO_BUDGET_SHARE.set(share)
    return share


class Channel:
    def __init__(
        self,
        account: KlaviyoAccount,
        *,
        revision: str,
        rate_limit_scale: float = 1.0,
        auth_pause_seconds: float = 30.0,
        limits: Mapping[str, Limit] = KLAVIYO_LIMITS,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        job_poll_seconds: float | None = None,
        budgets: Budgets | None = None,
    ) -> None:
        self.name = account.name
        self.tenants: set[str] = set()
        self.client = KlaviyoClient(
            api_key=account.api_key, base_url=account.base_url, revision=revision,
            budgets=budgets if budgets is not None else Budgets(limits, scale=rate_limit_scale),
            auth_pause_seconds=auth_pause_seconds,
            on_auth_change=self._auth_changed, retry=retry, transport=transport,
        )
        self.jobs = JobTracker(self.client) if job_poll_seconds is None else JobTracker(
            self.client, first_poll=job_poll_seconds, max_poll=job_poll_seconds
        )

    def serve(self, tenant: str) -> None:
        if tenant not in self.tenants:
            self.tenants.add(tenant)
            metrics.KLAVIYO_AUTH_FAILED.labels(tenant).set(int(self.client.auth.paused))

    def _auth_changed(self, paused: bool) -> None:
        for tenant in self.tenants:
            metrics.KLAVIYO_AUTH_FAILED.labels(tenant).set(int(paused))

    async def aclose(self) -> None:
        await self.jobs.aclose()
        await self.client.aclose()


class Channels:
    def __init__(
        self, resolve: Callable[[str], KlaviyoAccount], make: Callable[[KlaviyoAccount], Channel],
        *, sync_partitions: int | None = None,
    ) -> None:
        self._resolve = resolve
        self._make = make
        self._sync_partitions = sync_partitions
        self._by_account: dict[tuple[str, str], Channel] = {}
        self._by_tenant: dict[str, Channel] = {}

    @classmethod
    def from_settings(cls, settings: Settings, **options: object) -> Channels:
        def make(account: KlaviyoAccount) -> Channel:
            scale = settings.klaviyo_rate_limit_scale
            budgets = None if "limits" in options else _account_budgets(account, scale)
            return Channel(
                account, revision=settings.klaviyo_revision, rate_limit_scale=scale, budgets=budgets,
                auth_pause_seconds=settings.klaviyo_auth_pause_seconds, **options,  # type: ignore[arg-type]
            )

        return cls(settings.klaviyo_account, make, sync_partitions=settings.partitions)

    def plan_fleet_share(self, assigned_partitions: int) -> None:
        """The sync consumer now owns `assigned_partitions` of the sync topic: set_fleet_share.
        Channels built by hand (tests, benchmarks) spend budgets of their own: nothing to share."""
        if self._sync_partitions is not None:
            set_fleet_share(assigned_partitions, self._sync_partitions)

    def for_tenant(self, tenant: str) -> Channel:
        channel = self._by_tenant.get(tenant)
        if channel is None:
            account = self._resolve(tenant)
            key = (account.api_key, account.base_url)
            channel = self._by_account.get(key)
            if channel is None:
                channel = self._by_account[key] = self._make(account)
            self._by_tenant[tenant] = channel
            channel.serve(tenant)
        return channel

    @property
    def all(self) -> list[Channel]:
        return list(self._by_account.values())

    async def aclose(self) -> None:
        for channel in self._by_account.values():
            await channel.aclose()
