"""One thread for all of the server's torch work.

Measured on the 2-core CPU (shapes-t2v, 17 frames): a generation run on a thread while another
thread that once ran torch is still alive takes about twice as long (1.5 s → 2.9 s; each
thread keeps its own OpenMP team, and the teams contend) — the uvicorn worker threads, the text
batcher and one thread per video are exactly that case. So every model load, video chunk, text
batch and watermark check is a task on one long-lived thread, in arrival order: work from
several requests interleaves task by task (a video chunk, then a text batch, then the next
chunk), and nothing computes concurrently with anything else — on a CPU that would only
divide the same cores.

    result = compute.call(fn, *args)          # from any thread; runs inline on the compute thread
    future = compute.submit(fn, *args)        # a concurrent.futures.Future
    for chunk in compute.iterate(generator):  # each next() is one task
    compute.yield_point()                     # inside a long task: let waiting tasks run

A text batch is one task of up to a few seconds; it calls `yield_point` between sampler steps,
so live video streams keep getting their chunks while text is denoised.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future

__all__ = ["call", "iterate", "submit", "yield_point"]

_tasks: queue.SimpleQueue = queue.SimpleQueue()
_lock = threading.Lock()
_thread: threading.Thread | None = None


def _run(task) -> None:
    future, fn, args, kwargs = task
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(fn(*args, **kwargs))
    except BaseException as exc:  # noqa: BLE001 — the caller gets it from the future
        future.set_exception(exc)


def _loop() -> None:
    while True:
        _run(_tasks.get())


_last_yield = [0.0]


def yield_point(every: float = 0.05) -> None:
    """Inside a long task (a text batch, between two sampler steps): run the tasks waiting now
    (video chunks of live streams) first, at most once per ``every`` seconds. Lets a long task
    share the thread without splitting it; a no-op off the compute thread."""
    now = time.monotonic()
    if not _on_compute_thread() or now - _last_yield[0] < every:
        return
    _last_yield[0] = now
    for _ in range(_tasks.qsize()):
        try:
            task = _tasks.get_nowait()
        except queue.Empty:
            return
        _run(task)


def _on_compute_thread() -> bool:
    return threading.current_thread() is _thread


def submit(fn, *args, **kwargs) -> Future:
    """Queue ``fn(*args, **kwargs)`` on the compute thread."""
    global _thread
    with _lock:
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_loop, name="mdiff-compute", daemon=True)
            _thread.start()
    future: Future = Future()
    _tasks.put((future, fn, args, kwargs))
    return future


def call(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` on the compute thread; its result or its exception."""
    if _on_compute_thread():
        return fn(*args, **kwargs)
    return submit(fn, *args, **kwargs).result()


_END = object()


def iterate(iterable):
    """Items of ``iterable``, each produced by one task on the compute thread."""
    it = call(iter, iterable)
    while (item := call(next, it, _END)) is not _END:
        yield item
