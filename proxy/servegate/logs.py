"""Logging that never blocks the event loop.

Handlers on the loop would format and write every access-log line there; a full pipe on
stderr would then stall every request. So records go into a queue (a cheap append), and a
background thread formats and writes them. ``setup_logging`` returns a function that
flushes and stops that thread, for a clean exit.
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import queue
import sys
from collections.abc import Callable

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def setup_logging(level: str, *, fmt: str = FORMAT) -> Callable[[], None]:
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    writer = logging.StreamHandler(sys.stderr)
    writer.setFormatter(logging.Formatter(fmt))
    listener = logging.handlers.QueueListener(records, writer, respect_handler_level=False)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(logging.handlers.QueueHandler(records))
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    listener.start()
    stopped = False

    def stop() -> None:
        nonlocal stopped
        if not stopped:
            stopped = True
            listener.stop()

    atexit.register(stop)
    return stop
