"""Batch jobs, the pure part: windows, validation, line format, room, next steps."""

from __future__ import annotations

import json

import pytest

from gantry.gateway import batch_policy as p
from gantry.state.batches import Counts

CHAT = "/v1/chat/completions"


def line(cid: str = "a", url: str = CHAT, **body: object) -> bytes:
    b = {"model": "m", "messages": [], **body}
    return json.dumps({"custom_id": cid, "method": "POST", "url": url, "body": b}).encode()


@pytest.mark.parametrize(
    ("window", "seconds"),
    [
        ("24h", 86400.0),
        ("90s", 90.0),
        ("5m", 300.0),
        ("0h", None),
        ("24", None),
        ("1d", None),
        ("169h", None),
    ],
)
def test_window_seconds(window, seconds):
    assert p.window_seconds(window, 7 * 86400) == seconds


def test_a_malformed_line_fails_alone():
    data = b"\n".join(
        [
            line("a"),
            b"{not json",
            line("b", url="/v1/embeddings"),
            line("a"),
            line("c", stream=True),
            b"",
            line("d"),
        ]
    )
    rows = p.validate(data, CHAT, 100, 10_000)
    assert [r.custom_id for r in rows] == ["a", "line-2", "b", "a#line-4", "c", "d"]
    assert [r.result is None for r in rows] == [True, False, False, False, False, True]
    err = json.loads(rows[2].result or "")
    assert err["response"] is None and err["error"]["code"] == "invalid_request"
    assert "url" in err["error"]["message"]
    for r in rows:  # offsets point at the line itself
        assert data[r.offset : r.offset + r.length].strip().startswith((b"{",))


@pytest.mark.parametrize(("data", "message"), [(b"\n \n", "no requests"), (line() * 0, "no")])
def test_an_empty_file_is_refused(data, message):
    with pytest.raises(ValueError, match=message):
        p.validate(data, CHAT, 10, 1000)


def test_too_many_lines():
    with pytest.raises(ValueError, match="more than 2"):
        p.validate(b"\n".join([line("a"), line("b"), line("c")]), CHAT, 2, 1000)


def test_output_lines_follow_openai():
    ok, text = p.output_line("x", 200, "rid", b'{"choices":[]}')
    d = json.loads(text)
    assert ok and d["custom_id"] == "x" and d["error"] is None
    assert d["response"] == {"status_code": 200, "request_id": "rid", "body": {"choices": []}}
    assert d["id"].startswith("batch_req_")
    ok, text = p.output_line("x", 400, "rid", b'{"error":{"message":"bad"}}')
    assert not ok and json.loads(text)["response"]["status_code"] == 400
    d = json.loads(p.error_line("y", "batch_expired", p.EXPIRED_MESSAGE))
    assert d["response"] is None and d["error"]["code"] == "batch_expired"


@pytest.mark.parametrize(
    ("concurrency", "share", "capacity", "running", "waiting", "room"),
    [
        (16, 0.5, 0, 0, 0, 16),  # unlimited engines: the concurrency
        (16, 0.5, 8, 0, 0, 4),  # half of 8 slots
        (16, 0.5, 8, 3, 0, 1),
        (16, 0.5, 8, 5, 0, 0),
        (16, 0.5, 1, 0, 0, 1),  # always at least one
        (16, 1.0, 100, 0, 0, 16),
        (16, 0.5, 8, 0, 1, 0),  # interactive requests waiting: yield
    ],
)
def test_room(concurrency, share, capacity, running, waiting, room):
    assert (
        p.room(
            concurrency=concurrency,
            share=share,
            capacity=capacity,
            running=running,
            interactive_waiting=waiting,
        )
        == room
    )


@pytest.mark.parametrize(
    ("status", "counts", "now", "step"),
    [
        ("validating", None, 0, p.Step.VALIDATE),
        ("finalizing", None, 0, p.Step.FINALIZE),
        ("in_progress", Counts(3, 1, 0, 2, 1), 0, p.Step.NOTHING),
        ("in_progress", Counts(3, 2, 1, 0, 0), 0, p.Step.FINALIZE),
        ("in_progress", Counts(3, 1, 0, 2, 1), 100, p.Step.EXPIRE),  # past the window
        ("in_progress", Counts(3, 1, 0, 2, 2), 100, p.Step.NOTHING),  # all left running
        ("cancelling", Counts(3, 1, 0, 2, 1), 0, p.Step.NOTHING),  # one still running
        ("cancelling", Counts(3, 1, 0, 2, 0), 0, p.Step.FINALIZE),
    ],
)
def test_next_step(status, counts, now, step):
    assert p.next_step(status, counts, now, expires_at=50) is step


def test_final_status():
    assert p.final_status("cancelling", True) == "cancelled"
    assert p.final_status("finalizing", True) == "expired"
    assert p.final_status("in_progress", False) == "completed"
