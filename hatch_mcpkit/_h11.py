"""uvicorn's h11 protocol with a deadline on request headers (``serve --http``; see :mod:`hatch_mcpkit._http`).

uvicorn times a connection out only while it idles *between* requests: one that connects and
never sends (or never finishes) its request line and headers is kept for ever, before any token
is asked for -- enough of them and the server accepts no more connections (slowloris). Here a
connection has :data:`~hatch_mcpkit._http.HEADER_TIMEOUT` seconds, from connecting or from its
last answer, to send a whole request; else it is closed. A request being answered is never cut
off (its body and the call are the bearer token holder's, bounded by the body limit and the
tool's timeout).

Imported by uvicorn only (``uvicorn.Config(http="hatch_mcpkit._h11:HeadersInTime")``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from hatch_mcpkit._http import HEADER_TIMEOUT

__all__ = ["HeadersInTime"]


class HeadersInTime(H11Protocol):
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        super().data_received(data)
        if self.cycle is not cycle:  # a whole request arrived: it is being answered
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()  # the next request's headers (uvicorn's keep-alive timer stops at its first byte)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(HEADER_TIMEOUT, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self.cycle is None or self.cycle.response_complete:
            self.transport.close()
