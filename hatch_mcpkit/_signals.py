"""Stop a server on SIGINT (Ctrl-C) or SIGTERM: cancel what runs, then say which signal it was.

Python's own SIGINT handling raises ``KeyboardInterrupt`` wherever the main thread
happens to be, and the default SIGTERM disposition kills the process without cleaning
up. Inside :func:`stopped_by_signals` both signals instead cancel the enclosed work
(calls in flight are cancelled and waited for, the transport is closed), and the
caller exits with :attr:`Stop.exit_code` (:data:`SIGNAL_EXIT`: 0 after SIGTERM, 130 after Ctrl-C).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import AsyncIterator

__all__ = ["SIGNAL_EXIT", "Stop", "stopped_by_signals"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Exit codes after a graceful stop, for every server (stdio and HTTP): SIGTERM is how clients,
# supervisors and `docker stop` ask a server to end, so it is a clean 0; Ctrl-C is the user
# interrupting, 130 (128 + SIGINT) as a shell reports it.
SIGNAL_EXIT: dict[int, int] = {int(signal.SIGTERM): 0, int(signal.SIGINT): 130}


class Stop:
    """Which signal stopped the work (``signum``), or 0 when it ended by itself."""

    def __init__(self) -> None:
        self.signum = 0

    @property
    def exit_code(self) -> int:
        """The exit code after this stop (:data:`SIGNAL_EXIT`; 0 when it ended by itself)."""
        return SIGNAL_EXIT.get(self.signum, 0)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""


@contextlib.asynccontextmanager
async def stopped_by_signals() -> AsyncIterator[Stop]:
    """Run the body until it ends or SIGINT/SIGTERM arrives (then the body is cancelled)."""
    import anyio

    stop = Stop()
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            with anyio.open_signal_receiver(*SIGNALS) as received:
                async for signum in received:
                    stop.signum = int(signum)
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(watch)
        try:
            yield stop
        finally:
            tg.cancel_scope.cancel()
