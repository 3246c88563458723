"""The auth pause: 401/403 stop one Klaviyo account's deliveries until its key works again.

A bad or under-scoped key will not fix itself by retrying every request, and dead-lettering the
backlog would lose it for nothing: the key is usually fixed within minutes. So one request
probes every `pause` seconds while every other request of that account waits. Only a probe that
gets an answer other than 401/403 reopens the account: a probe that is cancelled (its batch was
revoked) hands probing to a waiting request, or to the next one to come, and the gate stays shut.
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
        self._closed = asyncio.Event()
        self._probing = False
        self._wake = asyncio.Event()  # set (and replaced) when the gate opens or probing is free

    @property
    def paused(self) -> bool:
        return not self._open.is_set()

    async def wait_open(self) -> bool:
        """Until the gate is open (False), or until this caller is the request probing (True)."""
        while not self._open.is_set():
            if not self._probing:
                self._probing = True
                return True
            await self._wake.wait()
        return False

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def claim_probe(self) -> bool:
        """After a 401/403: close the gate; True if the caller is now the one request probing."""
        if self._open.is_set():
            self._open.clear()
            self._closed.set()
            self._on_change(True)
        if self._probing:
            return False
        self._probing = True
        return True

    def reopen(self) -> None:
        self._probing = False
        if not self._open.is_set():
            self._open.set()
            self._closed.clear()
            self._on_change(False)
        self._notify()

    def abandon_probe(self) -> None:
        # The probing request was cancelled. The key is still bad as far as anyone knows: the
        # gate stays shut and one waiter (or the next request) probes next.
        self._probing = False
        self._notify()

    def _notify(self) -> None:
        self._wake.set()
        self._wake = asyncio.Event()
