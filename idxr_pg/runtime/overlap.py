"""Prepare the next batch while this one is written: one helper thread, written in order.

The backfill (`idxr_pg.runtime.backfill`) and the worker (`idxr_pg.runtime.worker`) both run
batches as ``prepare`` (lease, load, flatten, diff, embed: no transaction held) then ``write``
(one short transaction). With `PrepareAhead` the caller submits batch N+1's preparation to a
helper thread, then writes batch N on its own connection::

    with PrepareAhead(discard) as ahead:
        for batch in batches:
            ahead.submit(tag, prepare, batch)       # runs in the helper thread
            if len(ahead) == 2:
                tag, prepared = ahead.next()         # waits for the oldest preparation
                write(prepared)
        while ahead:
            write(ahead.next()[1])

- At most one preparation runs at a time (one helper), so a preparation owns its connection
  and the embedding service alone; batches come back in submission order, so only the caller
  writes, in order (checkpoints stay exact).
- `next` waits for the oldest batch and takes it out of the queue: once its preparation
  ended (with its result, or with its own error, after which the pipeline has given its
  leases back and the error is the caller's). A wait interrupted by a stop-now signal
  leaves it queued, for the ``with`` block's exit to discard.
- Leaving the ``with`` block on an exception discards every batch still pending: the one
  running is waited for, and each is handed to ``discard(tag, prepared)`` (``prepared`` is
  None when its preparation failed or never started), which gives its leases back; the helper
  is joined before the exception goes on, so no preparation outlives the block.
- A stop-now exit (`KeyboardInterrupt`: a second stop signal; `SystemExit`) first calls
  ``stop_now`` so that the running preparation ends at once instead of being waited for (the
  worker ends the helper connection's server session: a slow document query would otherwise
  hold the exit up).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from types import TracebackType
from typing import Generic, TypeVar

__all__ = ["PrepareAhead"]

log = logging.getLogger(__name__)

Tag = TypeVar("Tag")
Prepared = TypeVar("Prepared")


class PrepareAhead(Generic[Tag, Prepared]):
    """One helper thread preparing batches in submission order; see the module docstring."""

    def __init__(
        self,
        discard: Callable[[Tag, Prepared | None], None],
        *,
        stop_now: Callable[[], None] | None = None,
        thread_name: str = "idxr-prepare",
    ) -> None:
        self._discard = discard
        self._stop_now = stop_now
        self._thread_name = thread_name
        self._pending: deque[tuple[Tag, Future[Prepared]]] = deque()
        self._helper: ThreadPoolExecutor | None = None

    def __enter__(self) -> PrepareAhead[Tag, Prepared]:
        self._helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._thread_name)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if exc is not None and not isinstance(exc, Exception) and self._stop_now is not None:
                self._stop_now()
            if exc is not None:
                self.discard_all()
        finally:
            assert self._helper is not None
            self._helper.shutdown(wait=True)
            self._helper = None

    def __len__(self) -> int:
        return len(self._pending)

    def submit(self, tag: Tag, prepare: Callable[[], Prepared]) -> None:
        """Queue ``prepare()`` on the helper thread; ``tag`` travels with its result."""
        assert self._helper is not None, "PrepareAhead used outside its with block"
        self._pending.append((tag, self._helper.submit(prepare)))

    def next(self) -> tuple[Tag, Prepared]:
        """The oldest batch, once prepared; it leaves the queue with its result, or with its
        preparation's own error. An interrupted wait (stop now) leaves it queued, so leaving
        the block discards it."""
        tag, future = self._pending[0]
        try:
            prepared = future.result()
        except BaseException:
            if future.done():
                self._pending.popleft()
            raise
        self._pending.popleft()
        return tag, prepared

    def tags(self) -> list[Tag]:
        """The tags of the batches pending, oldest first."""
        return [tag for tag, _ in self._pending]

    def settle(self) -> None:
        """Wait until no preparation runs (they stay pending): the caller may then use what
        the helper uses (a connection, the embedding service) without racing it."""
        wait([future for _, future in self._pending])

    def discard_all(self) -> None:
        """Give back every pending batch: cancel what has not started, wait for the one
        running, hand each batch to ``discard`` (errors logged, never raised)."""
        while self._pending:
            tag, future = self._pending.popleft()
            prepared: Prepared | None = None
            if not future.cancel():
                try:
                    prepared = future.result()
                except BaseException:  # its own error: prepare gave its leases back already
                    prepared = None
            try:
                self._discard(tag, prepared)
            except Exception:
                log.warning("could not give back a prepared batch", exc_info=True)
