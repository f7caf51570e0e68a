from __future__ import annotations

import pytest

from gantry.gateway.redact import ORDER, luhn_ok, redact_body, redact_text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mail me at jane.doe@example.com now", "mail me at [REDACTED_EMAIL] now"),
        ("card 4111 1111 1111 1111 ok", "card [REDACTED_CARD] ok"),
        ("card 4111 1111 1111 1112 ok", "card 4111 1111 1111 1112 ok"),  # fails Luhn
        ("ssn 123-45-6789.", "ssn [REDACTED_NATIONAL_ID]."),
        ("from 192.168.10.4 today", "from [REDACTED_IP] today"),
        ("call +1 415 555 2671", "call [REDACTED_PHONE]"),
        ("version 3.11 and 42 apples", "version 3.11 and 42 apples"),
    ],
)
def test_redact_text(text, expected):
    assert redact_text(text, ORDER)[0] == expected


def test_kinds_are_selectable_and_bodies_are_walked():
    assert redact_text("a@b.co 10.0.0.1", ["ip"])[0] == "a@b.co [REDACTED_IP]"
    body = {
        "messages": [
            {"role": "user", "content": "I am a@b.co"},
            {"role": "user", "content": [{"type": "text", "text": "ip 10.0.0.1"}]},
        ],
        "prompt": ["x@y.org", "fine"],
    }
    assert redact_body(body, ORDER) == 3
    assert body["messages"][0]["content"] == "I am [REDACTED_EMAIL]"
    assert body["messages"][1]["content"][0]["text"] == "ip [REDACTED_IP]"
    assert body["prompt"] == ["[REDACTED_EMAIL]", "fine"]


def test_luhn():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
