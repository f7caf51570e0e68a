"""PII redaction: mask e-mail addresses, phone numbers, card numbers (Luhn-checked), IP
addresses and national ID patterns in prompts before they reach an engine.

Pure functions over text and request bodies; enabled per model, tenant or key.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

_PATTERNS: dict[str, re.Pattern[str]] = {
    "email": re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b"),
    "card": re.compile(r"\b(?:\d[ -]?){12,18}\d\b"),
    "national_id": re.compile(r"\b\d{3}-\d{2}-\d{4}\b"),  # US SSN shape
    "ip": re.compile(
        r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b"
        r"|\b(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}\b"
    ),
    "phone": re.compile(
        r"(?<![\w-])\+?\d{1,3}?[ .-]?\(?\d{2,4}\)?[ .-]?\d{3,4}[ .-]?\d{3,4}(?![\w-])"
    ),
}
# Cards before phones (a card number also looks like a long phone number).
ORDER = ("email", "card", "national_id", "ip", "phone")


def _phone_like(m: re.Match[str]) -> bool:
    """7-15 digits (E.164), and not a piece of a longer run of digit groups."""
    digits = sum(c.isdigit() for c in m.group())
    text, start, end = m.string, m.start(), m.end()
    before = text[max(0, start - 2) : start]
    after = text[end : end + 2]
    glued = (len(before) == 2 and before[0].isdigit() and before[1] in " -.") or (
        len(after) == 2 and after[1].isdigit() and after[0] in " -."
    )
    return 7 <= digits <= 15 and not glued


def luhn_ok(digits: str) -> bool:
    total, alt = 0, False
    for ch in reversed(digits):
        d = ord(ch) - 48
        if alt:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
        alt = not alt
    return total % 10 == 0


def redact_text(text: str, kinds: Iterable[str]) -> tuple[str, int]:
    """The text with PII replaced by ``[REDACTED_<KIND>]``, and how many were masked."""
    wanted = set(kinds)
    count = 0
    for kind in ORDER:
        if kind not in wanted:
            continue
        pat = _PATTERNS[kind]

        def sub(m: re.Match[str], kind: str = kind) -> str:
            nonlocal count
            if kind == "card":
                digits = re.sub(r"\D", "", m.group())
                if not 13 <= len(digits) <= 19 or not luhn_ok(digits):
                    return m.group()
            elif kind == "phone" and not _phone_like(m):
                return m.group()
            count += 1
            return f"[REDACTED_{kind.upper()}]"

        text = pat.sub(sub, text)
    return text, count


def redact_body(body: dict[str, Any], kinds: Iterable[str]) -> int:
    """Redact ``messages[].content`` (text or parts) and ``prompt`` in place."""
    kinds = tuple(kinds)
    total = 0
    for msg in body.get("messages") or ():
        if not isinstance(msg, dict):
            continue
        content = msg.get("content")
        if isinstance(content, str):
            msg["content"], n = redact_text(content, kinds)
            total += n
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    part["text"], n = redact_text(part["text"], kinds)
                    total += n
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        body["prompt"], n = redact_text(prompt, kinds)
        total += n
    elif isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        out = []
        for p in prompt:
            r, n = redact_text(p, kinds)
            out.append(r)
            total += n
        body["prompt"] = out
    return total
