"""Structured logs: one JSON object a line, with the node and the bound query id."""

from __future__ import annotations

import json
import logging

from dataisland.logs import JsonFormatter, bind_query, current_query


def _record(message: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("dataisland.test", logging.WARNING, __file__, 1, message, (), None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_a_line_carries_node_level_message_and_the_bound_query_id() -> None:
    formatter = JsonFormatter("qingpu")
    with bind_query("q-1"):
        assert current_query() == "q-1"
        line = json.loads(formatter.format(_record("partial failed", code="UNAVAILABLE")))
    assert current_query() == ""
    assert line["node"] == "qingpu"
    assert line["level"] == "WARNING"
    assert line["message"] == "partial failed"
    assert line["query_id"] == "q-1"
    assert line["code"] == "UNAVAILABLE"
    assert line["time"].endswith("+00:00")


def test_an_explicit_query_id_wins_and_objects_are_stringified() -> None:
    formatter = JsonFormatter("coordinator")
    with bind_query("outer"):
        line = json.loads(formatter.format(_record("x", query_id="inner", thing=object())))
    assert line["query_id"] == "inner"
    assert isinstance(line["thing"], str)


def test_exceptions_are_one_field_of_one_line() -> None:
    formatter = JsonFormatter("aggregator")
    record = _record("failed")
    error = ValueError("boom")
    record.exc_info = (ValueError, error, None)
    text = formatter.format(record)
    assert "\n" not in text
    assert "ValueError" in json.loads(text)["exception"]
