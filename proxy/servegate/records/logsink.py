"""The default sink: each row as one JSON line on the ``servegate.records`` logger.

With no database configured, usage still leaves the gateway in a shape a log pipeline can
parse: one line per row, ``{"table": ..., <columns>}``, timestamps in RFC 3339. Route or
silence the lines through the logger's name. Payload rows carry prompts and answers, so
they appear only for endpoints whose inference table is enabled.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import orjson

from servegate.records.rows import Row

LOGGER_NAME = "servegate.records"


class LogSink:
    def __init__(self, logger: logging.Logger | None = None, level: int = logging.INFO) -> None:
        self.logger = logger or logging.getLogger(LOGGER_NAME)
        self.level = level

    async def open(self) -> None:
        return None

    async def write(self, rows: Sequence[Row]) -> None:
        if not self.logger.isEnabledFor(self.level):
            return
        for row in rows:
            line = orjson.dumps({"table": row.table, **row.record()}, option=orjson.OPT_UTC_Z)
            self.logger.log(self.level, "%s", line.decode())

    async def close(self) -> None:
        return None
