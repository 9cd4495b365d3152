"""Dynamic micro-batching: requests that arrive close together are scored as one batch.

Each classify request becomes a job on a bounded queue. One worker thread (model work never
runs on the event loop) takes the first waiting job, then keeps taking jobs for up to
``batch_wait_ms`` or until ``batch_units`` sentences are gathered, splits their texts
(:meth:`StanceModel.units`) and scores all their sentences in one length-sorted call
(:meth:`StanceModel.classify_units`). Under load the queue is never empty, so batches fill
without waiting and throughput approaches one big ``classify()``.

A job whose client has disconnected is dropped before it is split or scored. A full queue
refuses new jobs (HTTP 503) instead of growing memory. An unexpected failure while splitting or
scoring fails only the requests concerned, with a coded 500 (:class:`InternalServerError`); its
traceback is logged once, and the worker lives on.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from stanceclf.errors import InternalServerError, ServerBusyError, StanceclfError
from stanceclf.infer.model import StanceModel
from stanceclf.infer.results import Prediction
from stanceclf.serve.settings import TEST_WORKER_GATE_ENV, wait_at_test_gate

log = logging.getLogger("uvicorn.error")  # uvicorn configures this logger; ours would print nothing


class BatchCounters:
    """Counts since start, by name (their meanings: :class:`stanceclf.serve.schemas.Stats`); thread-safe."""

    def __init__(self):
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def add(self, **amounts: int) -> None:
        with self._lock:
            self._counts.update(amounts)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


@dataclass(eq=False)
class _Job:
    texts: list[str]
    split_sentences: bool
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    #: Set on the event loop when the client is gone; the worker then skips the job.
    abandoned: bool = False

    def settle(self, result=None, error: BaseException | None = None) -> None:
        """Hand the outcome back to the event loop (called from the worker thread)."""
        try:
            self.loop.call_soon_threadsafe(self._settle, result, error)
        except RuntimeError:  # the loop has closed (shutdown): nobody is waiting, and the worker must not die
            pass

    def _settle(self, result, error) -> None:
        if self.future.done():  # cancelled: the request is gone
            return
        if error is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(result)


@dataclass
class _Batch:
    jobs: list[tuple[_Job, int, int]] = field(default_factory=list)  # job, first text index, end text index
    units: list[tuple[int, int, int, str]] = field(default_factory=list)
    texts: int = 0


def _served_error(error: Exception, doing: str) -> StanceclfError:
    """What the request hears of ``error``: a coded error as it is, anything else as a coded 500 whose
    traceback goes to the log (once, however many requests it fails)."""
    if isinstance(error, StanceclfError):
        return error
    log.error("stanceclf serve: unexpected error while %s", doing, exc_info=error)
    return InternalServerError(f"internal error while {doing} ({type(error).__name__}); the server's log has "
                               "the details")


class MicroBatcher:
    """Scores the texts of concurrent requests together on one worker thread."""

    def __init__(self, model: StanceModel, *, max_queue: int, batch_wait_ms: float, batch_units: int,
                 batch_size: int):
        self.model = model
        self.max_queue = max_queue
        self.batch_wait_s = batch_wait_ms / 1000
        self.batch_units = batch_units
        self.batch_size = batch_size
        self.counters = BatchCounters()
        # Unbounded on purpose: the bound is checked in submit(), so that close() can always enqueue its
        # stop marker. Only the event loop thread puts jobs, so the check cannot race another put.
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="stanceclf-batcher", daemon=True)

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def start(self) -> "MicroBatcher":
        self._thread.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    # ---- event loop side ----------------------------------------------------------------------
    def submit(self, texts: list[str], split_sentences: bool) -> _Job:
        """Queue a job, or refuse it when the queue is full."""
        if self._queue.qsize() >= self.max_queue:
            self.counters.add(rejected_busy=1)
            raise ServerBusyError(f"the queue is full ({self.max_queue} requests waiting); retry shortly")
        loop = asyncio.get_running_loop()
        job = _Job(texts, split_sentences, loop, loop.create_future())
        self._queue.put(job)
        self.counters.add(requests=1)
        return job

    async def classify(self, texts: list[str], split_sentences: bool,
                       disconnected: Callable[[], Awaitable[None]]) -> list[list[Prediction]] | None:
        """One list of predictions per text, or None when ``disconnected()`` finished first (the client left;
        the job is then dropped unless the worker has already started on it). ``disconnected`` is called only
        once the job is queued, so that a refused request leaves no coroutine never awaited."""
        job = self.submit(texts, split_sentences)
        gone = asyncio.ensure_future(disconnected())
        try:
            done, _ = await asyncio.wait({job.future, gone}, return_when=asyncio.FIRST_COMPLETED)
            return job.future.result() if job.future in done else None
        finally:
            gone.cancel()
            if not job.future.done():
                job.abandoned = True
                job.future.cancel()

    # ---- worker thread ------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            batch, stop = self._collect()
            if batch.jobs:
                self._score(batch)
            if stop:
                return

    def _collect(self) -> tuple[_Batch, bool]:
        """Wait for a job, then gather more for up to ``batch_wait_s`` or ``batch_units`` units."""
        batch = _Batch()
        job = self._queue.get()
        if job is not None:
            wait_at_test_gate(TEST_WORKER_GATE_ENV)
        deadline = None
        while job is not None:
            self._take(job, batch)
            if deadline is None:
                deadline = time.monotonic() + self.batch_wait_s
            if len(batch.units) >= self.batch_units:
                return batch, False
            remaining = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                return batch, False
        return batch, True

    def _take(self, job: _Job, batch: _Batch) -> None:
        if job.abandoned:
            self.counters.add(abandoned=1)
            return
        try:
            units = self.model.units(job.texts, split_sentences=job.split_sentences)
        except Exception as error:  # noqa: BLE001 - that request fails (500); the worker must live on
            job.settle(error=_served_error(error, "splitting the texts"))
            return
        offset = batch.texts
        batch.units.extend((offset + index, start, end, text) for index, start, end, text in units)
        batch.texts += len(job.texts)
        batch.jobs.append((job, offset, batch.texts))

    def _score(self, batch: _Batch) -> None:
        try:
            results = self.model.classify_units(batch.units, batch.texts, batch_size=self.batch_size)
        except Exception as error:  # noqa: BLE001 - every waiting request must hear of it
            served = _served_error(error, "scoring")
            for job, _, _ in batch.jobs:
                job.settle(error=served)
            return
        self.counters.add(batches=1 if batch.units else 0, texts=batch.texts, units=len(batch.units))
        for job, begin, end in batch.jobs:
            job.settle(results[begin:end])
