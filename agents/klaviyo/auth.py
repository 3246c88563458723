"""The auth pause: 401/403 stop one Klaviyo account's deliveries until its key works again.

A bad or under-scoped key will not fix itself by retrying every request, and dead-lettering the
backlog would lose it for nothing: the key is usually fixed within minutes. So one request
probes every `pause` seconds while every other request of that account waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class AuthGate:
    """While an account answers 401/403, one request probes every `pause` seconds; others wait."""

    def __init__(self, pause: float, on_change: Callable[[bool], None]) -> None:
        self.pause = pause
        self._on_change = on_change
        self._open = asyncio.Event()
        self._open.set()
        self._probing = False

    @property
    def paused(self) -> bool:
        return not self._open.is_set()

    async def wait_open(self) -> None:
        await self._open.wait()

    def claim_probe(self) -> bool:
        """After a 401/403: close the gate; True if the caller is now the one request probing."""
        if self._open.is_set():
            self._open.clear()
            self._on_change(True)
        if self._probing:
            return False
        self._probing = True
        return True

    def reopen(self) -> None:
        self._probing = False
        if not self._open.is_set():
            self._open.set()
            self._on_change(False)

    def abandon_probe(self) -> None:
        # The probing request was cancelled: let the waiters try, one of them probes next.
        self._probing = False
        self._open.set()
