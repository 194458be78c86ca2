"""Google's batch endpoint (`POST /batch/calendar/v3`), as the sandbox speaks it.

A batch is a `multipart/mixed` body whose parts are `application/http` requests, each with
a `Content-ID`; the answer is `multipart/mixed` again, one `application/http` response per
part, its `Content-ID` being `response-` and the request's. As at Google, every inner
request is authenticated, counted against the quotas and answered on its own (a 401 or a
429 for one part leaves the others alone); the outer answer is 200 whenever the batch could
be read, 400 when it could not.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import compat32
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

from calsync_dev.sandbox.state import RawBody

BATCH_PATH = "/batch/calendar/v3"
MAX_PARTS = 1000  # Google refuses larger batches


class BatchFormatError(ValueError):
    pass


@dataclass
class InnerRequest:
    content_id: str
    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-cased names
    body: bytes


@dataclass
class InnerResponse:
    content_id: str
    status: int
    body: Any  # JSON-able (nothing for 204), or a RawBody (a page, not Google's)
    headers: dict[str, str]


def parse_batch(content_type: str, raw: bytes) -> list[InnerRequest]:
    if not content_type.lower().startswith("multipart/mixed"):
        raise BatchFormatError("a batch must be multipart/mixed")
    message = BytesParser(policy=compat32).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw
    )
    parts = message.get_payload()
    if not message.is_multipart() or not isinstance(parts, list) or not parts:
        raise BatchFormatError("the batch has no parts")
    if len(parts) > MAX_PARTS:
        raise BatchFormatError(f"a batch takes at most {MAX_PARTS} calls")
    return [_inner_request(part) for part in parts]


def _inner_request(part: Any) -> InnerRequest:
    if part.get_content_type() != "application/http":
        raise BatchFormatError("each part must be application/http")
    payload = part.get_payload(decode=True) or b""
    head, _, body = payload.replace(b"\r\n", b"\n").partition(b"\n\n")
    request_line, *header_lines = head.decode("utf-8").split("\n")
    try:
        method, target, _version = request_line.split(" ", 2)
    except ValueError:
        raise BatchFormatError(f"not an HTTP request line: {request_line!r}") from None
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    url = urlsplit(target)
    return InnerRequest(
        str(part.get("Content-ID", "")).strip(),
        method.upper(),
        url.path,
        url.query,
        headers,
        body.rstrip(b"\n") if body else b"",
    )


def render_batch(responses: list[InnerResponse]) -> tuple[str, bytes]:
    """The answer's Content-Type and body."""
    boundary = "batch_" + secrets.token_hex(12)
    chunks = []
    for response in responses:
        content_type = "application/json; charset=UTF-8"
        if isinstance(response.body, RawBody):  # a page, not Google's JSON
            payload, content_type = response.body.payload, response.body.content_type
        else:
            payload = b"" if response.status == 204 else json.dumps(response.body).encode()
        content_id = response.content_id.removeprefix("<").removesuffix(">")
        lines = [
            f"--{boundary}",
            "Content-Type: application/http",
            f"Content-ID: <response-{content_id}>",
            "",
            f"HTTP/1.1 {response.status} {HTTPStatus(response.status).phrase}",
        ]
        if payload or response.status != 204:
            lines.append(f"Content-Type: {content_type}")
        lines += [f"{name}: {value}" for name, value in response.headers.items()]
        lines += [f"Content-Length: {len(payload)}", "", ""]
        chunks.append("\r\n".join(lines).encode() + payload + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return f"multipart/mixed; boundary={boundary}", b"".join(chunks)
