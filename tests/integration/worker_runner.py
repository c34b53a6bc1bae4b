"""Running a `Worker` in a thread of the test process (the model is loaded once per process)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from idxr_pg.config import IdxrConfig
from idxr_pg.runtime.worker import Worker
from tests.integration.worker_support import queue_depth, wait_until


class WorkerThread:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="test-worker", daemon=True)

    def _run(self) -> None:
        try:
            self.worker.run()
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    def stop(self) -> None:
        self.worker.stop()
        self.thread.join(60)
        assert not self.thread.is_alive(), "worker did not stop within 60 s"
        if self.error is not None:
            raise self.error

    def settle(self, url: str, *, batches_after: int | None = None, timeout: float = 60) -> None:
        """Wait until the queue is empty and the worker has counted its last batch."""
        wait_until(lambda: queue_depth(url) == 0, timeout, what="the queue to drain")
        if batches_after is not None:
            wait_until(
                lambda: self.worker.totals.batches > batches_after,
                timeout,
                what="the worker to finish its batch",
            )
        if self.error is not None:
            raise self.error


@contextmanager
def worker_thread(url: str, config: IdxrConfig, **kwargs: Any) -> Iterator[WorkerThread]:
    kwargs.setdefault("heartbeat_interval", 0.5)
    runner = WorkerThread(Worker(url, config, **kwargs))
    runner.thread.start()
    try:
        yield runner
    finally:
        runner.stop()
