"""Structured logs: one JSON object per line, carrying the node's name and the query id.

Every node (coordinator, enclaves, aggregator, witnesses) logs through the standard `logging`
module; `setup_logging` installs `JsonFormatter` on the root logger so each line is an object
with `time`, `level`, `logger`, `node`, `message`, the `query_id` of the query being worked on
(bound with `bind_query` for the duration of an RPC or a fan-out), and any fields passed as
`extra=`. Operators grep or ship these lines as they are (docs: README, *Operating a node*).

Lines never carry data values: messages name queries, departments, methods and status codes,
as the errors they quote do (dataisland/errors.py). This module does not decide what to log.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import sys
from collections.abc import Iterator
from contextvars import ContextVar

_QUERY_ID: ContextVar[str] = ContextVar("dataisland_query_id", default="")

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


def current_query() -> str:
    """The query id bound in this context ('' when none)."""
    return _QUERY_ID.get()


@contextlib.contextmanager
def bind_query(query_id: str) -> Iterator[None]:
    """Attach `query_id` to every log line written in this context (thread or task)."""
    token = _QUERY_ID.set(query_id)
    try:
        yield
    finally:
        _QUERY_ID.reset(token)


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON (keys sorted after the fixed ones)."""

    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON object on one line."""
        line: dict[str, object] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "node": self.node,
            "message": record.getMessage(),
        }
        query_id = getattr(record, "query_id", None) or current_query()
        if query_id:
            line["query_id"] = query_id
        for key in sorted(set(vars(record)) - _STANDARD - set(line)):
            value = vars(record)[key]
            line[key] = (
                value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
            )
        if record.exc_info:
            # The node's own log may hold a traceback; callers never see one (dataisland/rpc.py).
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def setup_logging(node: str, *, level: int = logging.INFO) -> None:
    """Send every log line of this process to stderr as JSON, named after `node`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(node))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
