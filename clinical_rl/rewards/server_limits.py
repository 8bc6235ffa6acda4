"""Request limits of `clinical-rl serve-reward`: a body-size cap enforced before anything is parsed, per-field caps
checked after, and one log line for every rejected request (status and reason, never the payload's texts).

The body cap is an ASGI middleware: it answers 413 at once when `Content-Length` is over the cap, and otherwise
reads the body itself, counting bytes (so a chunked body without a `Content-Length` is capped the same way), and
answers 413 as soon as the count passes the cap; a body within the cap must be UTF-8 (400 otherwise) and is handed
to the app unchanged. The rest of an oversize body is read and discarded (never stored, up to `DRAIN_LIMIT_BYTES`)
so that the client gets the 413 instead of a reset connection.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("clinical_rl.rewards.server")

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_FIELD_CHARS = 64 * 1024
DEFAULT_MAX_ITEMS = 1024
DRAIN_LIMIT_BYTES = 64 * 1024 * 1024  # past this, an oversize body is no longer drained: the connection is closed

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class LimitExceeded(ValueError):
    """A parsed request breaks a per-field or per-request cap; `problems` name each field and index."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class ServerLimits:
    """Caps of one reward server; each rejection names the flag that sets it.

    Raises:
        ValueError: a cap below 1.
    """

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES  # --max-body-bytes: request body, before parsing (413)
    max_field_chars: int = DEFAULT_MAX_FIELD_CHARS  # --max-field-chars: each query / prompt / label text (413)
    max_items: int = DEFAULT_MAX_ITEMS  # --max-items: samples per request (413)

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_field_chars", "max_items"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")


def log_rejection(method: str, path: str, client: str, status: int, reason: str) -> None:
    """The one log line of a rejected request: method, path, client address, status and reason (no payload)."""
    log.warning("%s %s from %s -> %d %s", method, path, client, status, reason[:500])


def client_of(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "-"


class BodyLimitMiddleware:
    """ASGI middleware: caps the request body at `max_bytes` (413) and requires it to be UTF-8 (400)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await self._reject(scope, send, 400, "invalid Content-Length header")
                return
            if int(declared) > self.max_bytes:
                await _drain(receive, 0)
                await self._reject(scope, send, 413, f"body of {int(declared)} bytes (Content-Length) exceeds "
                                                     f"--max-body-bytes {self.max_bytes}")
                return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client went away: nothing to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                size = await _drain(receive, size) if message.get("more_body", False) else size
                more = "+" if size > DRAIN_LIMIT_BYTES else ""
                await self._reject(scope, send, 413, f"body of {size}{more} bytes (counted while reading) exceeds "
                                                     f"--max-body-bytes {self.max_bytes}")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as err:
            await self._reject(scope, send, 400, f"body is not valid UTF-8 (byte {err.start}: {err.reason})")
            return
        await self.app(scope, _replay(body), send)

    async def _reject(self, scope: Scope, send: Send, status: int, reason: str) -> None:
        log_rejection(scope["method"], scope["path"], client_of(scope), status, reason)
        payload = json.dumps({"error": reason, "problems": []}).encode()  # the shape of every rejection
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})


async def _drain(receive: Receive, size: int) -> int:
    """Read and discard the rest of a body (up to `DRAIN_LIMIT_BYTES` in all); the bytes counted so far."""
    while size <= DRAIN_LIMIT_BYTES:
        message = await receive()
        size += len(message.get("body", b""))
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            break
    return size


def _replay(body: bytes) -> Receive:
    """A `receive` that yields `body` once, then waits like the server's (a disconnect after the body)."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive


def field_problems(query: list[str], prompts: list[str], labels: list[str | Mapping[str, Any]],
                   limits: ServerLimits) -> list[str]:
    """Every cap a parsed request breaks, each naming the field and index (`query[3]: 70000 characters ...`)."""
    if len(query) > limits.max_items:
        return [f"query: {len(query)} items exceed --max-items {limits.max_items}"]
    problems: list[str] = []

    def check(where: str, value: Any) -> None:
        if isinstance(value, str) and len(value) > limits.max_field_chars:
            problems.append(f"{where}: {len(value)} characters exceed --max-field-chars {limits.max_field_chars}")
        elif isinstance(value, Mapping):
            for key, item in value.items():
                check(f"{where}.{key}", item)

    for name, values in (("query", query), ("prompts", prompts), ("labels", labels)):
        for i, value in enumerate(values):
            check(f"{name}[{i}]", value)
    return problems
