"""Stopping a long-running command on SIGINT/SIGTERM, shared by the worker and backfill.

The first signal asks for a clean stop: the command finishes its current batch and leaves.
A second one stops at once: `KeyboardInterrupt` is raised where the main thread is (psycopg
cancels a running query on it), the command's own clean-up runs on the way out (leases are
released, or expire), and the process should exit with `StopRequest.exit_code`, 128 + signum.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger("idxr_pg.signals")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Records the first stop signal; call it to ask "should I stop?".

    ``on_stop`` runs once, on the first signal (e.g. `Worker.stop`), for code that waits on
    its own event rather than polling this object.
    """

    def __init__(self, on_stop: Callable[[], None] | None = None) -> None:
        self.signum: int | None = None
        self._on_stop = on_stop

    def __call__(self) -> bool:
        return self.signum is not None

    def handle(self, signum: int, _frame: object) -> None:
        """The signal handler: a clean stop first, `KeyboardInterrupt` on the second signal."""
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        log.warning(
            "%s received: stopping after the current batch (send it again to stop now)",
            signal.Signals(signum).name,
        )
        if self._on_stop is not None:
            self._on_stop()

    @property
    def exit_code(self) -> int:
        """128 + the signal received (SIGINT when none was, as for a plain Ctrl-C)."""
        return 128 + (self.signum or signal.SIGINT)


@contextmanager
def stop_on_signals(stop: StopRequest) -> Iterator[StopRequest]:
    """Route SIGINT and SIGTERM to ``stop`` inside the block (main thread only), then restore."""
    previous = {sig: signal.signal(sig, stop.handle) for sig in STOP_SIGNALS}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
