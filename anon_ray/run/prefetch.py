"""Run a producer (decoding) in a thread so it overlaps with inference or encoding."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
_END = object()


def prefetch(items: Iterable[T], depth: int = 8) -> Iterator[T]:
    """Yield `items` produced by a background thread, at most `depth` ahead.

    Exceptions in the producer are re-raised in the consumer, so a decode error fails the asset
    instead of ending the stream early (a short stream would look like a complete one).
    """
    buf: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                buf.put(item)
            buf.put(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            buf.put(exc)

    thread = threading.Thread(target=produce, daemon=True, name="anon-ray-prefetch")
    thread.start()
    try:
        while True:
            item = buf.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                buf.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)
