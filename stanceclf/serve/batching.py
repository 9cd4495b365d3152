"""Dynamic micro-batching: requests that arrive close together are scored as one batch, and a large request
is scored in pieces, between which other requests are served.

A classify request is split into units on a thread of its own (:meth:`MicroBatcher.units`) and then
becomes a job on a bounded queue. One worker thread (model work never runs on the event loop) takes the
first waiting job, then keeps taking jobs for up to ``batch_wait_ms`` or until ``batch_units`` units are
gathered, and scores them in one length-sorted call. A job of more than ``batch_size`` units is large:
it is scored in pieces, one piece a batch, and each piece is one of the forward passes ``classify()``
would make of it (at most ``batch_size`` units, and within its token budget), so that its scores
are those of ``classify()`` byte for byte whatever else the server does. Batches of small jobs
alternate with pieces of large ones (in turn): a one-sentence request that arrives while large requests
run waits for about one forward pass, however large they are, and a large request still advances every
other batch, however many small ones arrive. Under load the queue is never empty, so batches fill
without waiting and throughput approaches one big ``classify()``.

A job whose client has disconnected is dropped before its next piece is scored. A full queue (large
requests in progress count as waiting) refuses new jobs (HTTP 503) instead of growing memory. An
unexpected failure while splitting or scoring fails only the requests concerned, with a coded 500
(:class:`InternalServerError`); its traceback is logged once, and the worker lives on.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from stanceclf.errors import InternalServerError, ServerBusyError, StanceclfError
from stanceclf.infer.model import StanceModel, Unit
from stanceclf.infer.padding import length_batches
from stanceclf.infer.results import Prediction
from stanceclf.serve.settings import ServeHooks

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
    units: list[Unit]
    n_texts: int
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    #: Positions of the units, piece by piece: one piece for a small job, ``classify()``'s forward passes for
    #: a large one.
    pieces: list[list[int]]
    #: Set on the event loop when the client is gone; the worker then drops the job before its next piece.
    abandoned: bool = False
    #: Pieces handed to batches so far (the worker's cursor).
    cut: int = 0
    predictions: list[Prediction | None] = field(init=False)

    def __post_init__(self):
        self.predictions = [None] * len(self.units)

    @property
    def fully_cut(self) -> bool:
        return self.cut >= len(self.pieces)

    def results(self) -> list[list[Prediction]]:
        """The predictions, one list per text, in order."""
        grouped: list[list[Prediction]] = [[] for _ in range(self.n_texts)]
        for (text_index, *_), prediction in zip(self.units, self.predictions):
            grouped[text_index].append(prediction)
        return grouped

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


def _served_error(error: Exception, doing: str) -> StanceclfError:
    """What the request hears of ``error``: a coded error as it is, anything else as a coded 500 whose
    traceback goes to the log (once, however many requests it fails)."""
    if isinstance(error, StanceclfError):
        return error
    log.error("stanceclf serve: unexpected error while %s", doing, exc_info=error)
    return InternalServerError(f"internal error while {doing} ({type(error).__name__}); the server's log has "
                               "the details")


class MicroBatcher:
    """Scores the units of concurrent requests together on one worker thread."""

    def __init__(self, model: StanceModel, *, max_queue: int, batch_wait_ms: float, batch_units: int,
                 batch_size: int, hooks: ServeHooks = ServeHooks()):
        self.model = model
        self.max_queue = max_queue
        self.batch_wait_s = batch_wait_ms / 1000
        self.batch_units = batch_units
        self.batch_size = batch_size
        self.hooks = hooks
        self.counters = BatchCounters()
        # Unbounded on purpose: the bound is checked in submit(), so that close() can always enqueue its
        # stop marker. Only the event loop thread puts jobs, so the check cannot race another put.
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        # Jobs taken off the queue (worker thread only), small and large, in the order they get their next
        # piece; and whether the last batch was of small jobs.
        self._small: deque[_Job] = deque()
        self._large: deque[_Job] = deque()
        self._small_last = False
        self._thread = threading.Thread(target=self._run, name="stanceclf-batcher", daemon=True)

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    @property
    def in_progress(self) -> int:
        """Large jobs taken off the queue and not fully cut yet (read from the event loop: len() is atomic)."""
        return len(self._large)

    def start(self) -> "MicroBatcher":
        self._thread.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    # ---- event loop side ----------------------------------------------------------------------
    async def units(self, texts: list[str], split_sentences: bool) -> list[Unit]:
        """The units of ``texts``, split on a thread of their own, so that a long request's splitting
        holds up neither the event loop nor the scoring of others; not split when the queue is full."""
        self._refuse_when_full()
        try:
            return await asyncio.to_thread(self.model.units, texts, split_sentences=split_sentences)
        except Exception as error:  # noqa: BLE001 - that request fails (500), nothing else
            raise _served_error(error, "splitting the texts") from None

    def _refuse_when_full(self) -> None:
        if self.queued + self.in_progress >= self.max_queue:
            self.counters.add(rejected_busy=1)
            raise ServerBusyError(f"the queue is full ({self.max_queue} requests waiting or in progress); retry "
                                  "shortly")

    def pieces(self, units: list[Unit]) -> list[list[int]]:
        """How a job is scored: a small one in one piece, a large one (more than ``batch_size`` units) in the
        length-sorted forward passes that ``classify()`` makes (the same order, the same cuts)."""
        if len(units) <= self.batch_size:
            return [list(range(len(units)))]
        ids, _ = self.model.tokenize([unit.text for unit in units], [unit.context for unit in units])
        order = sorted(range(len(ids)), key=lambda position: len(ids[position]))
        return list(length_batches(order, ids, self.batch_size))

    def submit(self, units: list[Unit], n_texts: int, pieces: list[list[int]]) -> _Job:
        """Queue a job, or refuse it when the queue is full."""
        self._refuse_when_full()
        loop = asyncio.get_running_loop()
        job = _Job(units, n_texts, loop, loop.create_future(), pieces)
        self._queue.put(job)
        self.counters.add(requests=1)
        return job

    async def classify(self, units: list[Unit], n_texts: int,
                       disconnected: Callable[[], Awaitable[None]]) -> list[list[Prediction]] | None:
        """One list of predictions per text, or None when ``disconnected()`` finished first (the client left;
        the rest of the job is then dropped). ``disconnected`` is called only once the job is queued, so
        that a refused request leaves no coroutine never awaited."""
        try:  # a large job is tokenized to be cut: on a thread, like splitting
            pieces = self.pieces(units) if len(units) <= self.batch_size else await asyncio.to_thread(self.pieces,
                                                                                                       units)
        except Exception as error:  # noqa: BLE001 - that request fails (500), nothing else
            raise _served_error(error, "scoring") from None
        job = self.submit(units, n_texts, pieces)
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
            if not (self._small or self._large):
                job = self._queue.get()
                if job is None:
                    return
                self._take(job)
                deadline = time.monotonic() + self.batch_wait_s  # the batch's first job waits for others
            else:
                deadline = None  # work in hand: nothing waits for company
            self.hooks.before_batch()
            stopping = not self._gather(deadline)
            pieces = self._cut()
            if pieces:
                self._score(pieces)
            if stopping:
                return

    def _take(self, job: _Job) -> None:
        (self._small if len(job.pieces) == 1 else self._large).append(job)

    def _gather(self, deadline: float | None) -> bool:
        """Take waiting jobs into hand until a batch of small ones would be full, waiting for more until
        ``deadline`` (none: only those already waiting). False when the stop marker came."""
        gathered = sum(len(job.units) for job in self._small)
        while gathered < self.batch_units:
            remaining = deadline - time.monotonic() if deadline is not None else 0
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                return True
            if job is None:
                return False
            self._take(job)
            gathered += len(job.units) if len(job.pieces) == 1 else 0
        return True

    def _cut(self) -> list[tuple[_Job, list[int]]]:
        """The next batch: small jobs while they fit in ``batch_units`` units (the first always does), or
        (every other batch, while there are both) the next piece of the first large job, which then goes
        last. Jobs the batch did not reach come first next time. Abandoned jobs are dropped."""
        self._small_last = bool(self._small) and not (self._small_last and self._large)
        source = self._small if self._small_last else self._large
        pieces, room = [], self.batch_units
        while source:
            job = source[0]
            if job.abandoned:
                source.popleft()
                self.counters.add(abandoned=1)
                continue
            piece = job.pieces[job.cut]
            if pieces and (not self._small_last or len(piece) > room):
                break  # a piece of a large job is scored alone, as classify() scores it
            source.popleft()
            job.cut += 1
            room -= len(piece)
            pieces.append((job, piece))
            if not job.fully_cut:
                self._large.append(job)
        return pieces

    def _score(self, pieces: list[tuple[_Job, list[int]]]) -> None:
        units = [job.units[position] for job, piece in pieces for position in piece]
        try:
            probs, truncated = self.model.score_units(units, batch_size=self.batch_size)
            predictions = iter(self.model.unit_predictions(units, probs, truncated))
        except Exception as error:  # noqa: BLE001 - every request in the batch must hear of it
            served = _served_error(error, "scoring")
            failed = {id(job) for job, _ in pieces}
            for job, _ in pieces:
                job.settle(error=served)
            self._large = deque(job for job in self._large if id(job) not in failed)
            return
        self.counters.add(batches=1 if units else 0, units=len(units))
        for job, piece in pieces:
            for position, prediction in zip(piece, predictions):
                job.predictions[position] = prediction
            if job.fully_cut:
                self.counters.add(texts=job.n_texts)
                job.settle(job.results())
