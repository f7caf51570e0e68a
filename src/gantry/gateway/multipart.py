"""``multipart/form-data`` request bodies (file uploads), parsed with the standard
library's ``email`` parser.

Why not ``python-multipart``: its strength is streaming, and the HTTP front hands
the handler the whole body already (read under the upload limit), so a streaming
parser would buy nothing here and add a dependency; ``email`` parses MIME parts
correctly (boundaries, quoted parameters, binary payloads) and is maintained with
Python itself.
"""

from __future__ import annotations

import email.parser
import email.policy
from dataclasses import dataclass

from gantry.errors import ClientError


@dataclass(frozen=True, slots=True)
class Part:
    name: str
    filename: str | None
    data: bytes


def parse_form(content_type: str, body: bytes) -> dict[str, Part]:
    """The form's parts by field name; ``ClientError`` (400) for anything else."""
    if content_type.split(";", 1)[0].strip().lower() != "multipart/form-data":
        raise ClientError(
            f"Content-Type must be multipart/form-data, got {content_type or 'nothing'}."
        )
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not msg.is_multipart():
        raise ClientError("The multipart body could not be read (no parts found).")
    parts: dict[str, Part] = {}
    for sub in msg.iter_parts():
        name = sub.get_param("name", header="content-disposition")
        if not isinstance(name, str) or not name:
            continue
        payload = sub.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        parts.setdefault(name, Part(name, sub.get_filename(), data))
    return parts
