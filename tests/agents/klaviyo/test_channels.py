"""Several Klaviyo accounts: each its own client and rate budget; tenants on one key share one."""

from __future__ import annotations

import asyncio

from agents.klaviyo.channels import Channels
from agents.settings import Settings

ENV = {
    "KLAVIYO_API_KEY": "pk_default_account",
    "KLAVIYO_API_KEY_ACME": "pk_acme_account",
    "KLAVIYO_API_KEY_GLOBEX": "pk_acme_account",  # the same Klaviyo account as acme
    "KLAVIYO_API_KEY_INITECH": "pk_initech_account",
    "RETURNSYNC_DEV": "1",
}


def test_each_account_spends_its_own_budget_and_tenants_on_one_key_share_it() -> None:
    channels = Channels.from_settings(Settings.from_env(ENV))
    acme, globex, initech, other = (channels.for_tenant(t) for t in ("acme", "globex", "initech", "other"))
    assert acme is globex
    assert len({id(acme), id(initech), id(other)}) == 3
    burst = acme.client.budgets.available("profile-import")
    for _ in range(burst):
        assert acme.client.budgets.get("profile-import").try_spend()  # type: ignore[union-attr]
    assert acme.client.budgets.available("profile-import") == 0
    assert globex.client.budgets.available("profile-import") == 0, "one account, one budget"
    assert initech.client.budgets.available("profile-import") == burst, "another account is untouched"
    assert other.client.budgets.available("profile-import") == burst
    asyncio.run(channels.aclose())
