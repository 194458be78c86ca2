"""A push-notification receiver for tests: a small HTTPS server (its certificate from the
sandbox's CA, which is what the sandbox trusts) that records every notification the sandbox
POSTs to it and answers with a status a test chooses.

    with NotificationReceiver(sandbox) as receiver:
        ... events.watch with address=receiver.url ...
        receiver.wait_for(lambda got: len(got) >= 2)
        assert [n.state for n in receiver.notifications] == ["sync", "exists"]
"""

from __future__ import annotations

import os
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from calsync_dev.sandbox.client import SandboxClient


@dataclass(frozen=True)
class Notification:
    """One message as received: its X-Goog-* headers, its body and when it came."""

    channel_id: str
    token: str | None
    expiration: str | None
    resource_id: str
    resource_uri: str
    state: str
    number: int
    body: bytes
    user_agent: str
    received_at: float = field(default_factory=time.time)


class NotificationReceiver:
    """Records notifications; `status` is what it answers (200 unless a test says else);
    `hold()` keeps every answer waiting until `release()` (a receiver that is slow)."""

    def __init__(
        self,
        sandbox: SandboxClient,
        *,
        https: bool = True,
        path: str = "/google/notifications",
        certificate: tuple[str, str] | None = None,
    ) -> None:
        """`https`: TLS with a certificate from the sandbox's CA, or `certificate` (chain
        PEM, key PEM) from elsewhere (one the sandbox does not trust); else plain http."""
        self.notifications: list[Notification] = []
        self.status = 200
        self._changed = threading.Condition()
        self._open = threading.Event()
        self._open.set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                receiver._record(self.headers, body)
                receiver._open.wait(60)
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        if https:
            cert_pem, key_pem = certificate or sandbox.receiver_certificate(("127.0.0.1",))
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            with tempfile.TemporaryDirectory() as folder:
                cert_file, key_file = os.path.join(folder, "c.pem"), os.path.join(folder, "k.pem")
                with open(cert_file, "w") as out:
                    out.write(cert_pem)
                with open(key_file, "w") as out:
                    out.write(key_pem)
                context.load_cert_chain(cert_file, key_file)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        port = self._server.server_address[1]
        self.url = f"{'https' if https else 'http'}://127.0.0.1:{port}{path}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="notification-receiver", daemon=True
        )
        self._thread.start()

    def _record(self, headers: Any, body: bytes) -> None:
        notification = Notification(
            channel_id=headers.get("X-Goog-Channel-ID", ""),
            token=headers.get("X-Goog-Channel-Token"),
            expiration=headers.get("X-Goog-Channel-Expiration"),
            resource_id=headers.get("X-Goog-Resource-ID", ""),
            resource_uri=headers.get("X-Goog-Resource-URI", ""),
            state=headers.get("X-Goog-Resource-State", ""),
            number=int(headers.get("X-Goog-Message-Number", "0")),
            body=body,
            user_agent=headers.get("User-Agent", ""),
        )
        with self._changed:
            self.notifications.append(notification)
            self._changed.notify_all()

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def of(self, channel_id: str) -> list[Notification]:
        with self._changed:
            return [n for n in self.notifications if n.channel_id == channel_id]

    def wait_for(
        self, done: Callable[[list[Notification]], bool], timeout_s: float = 15.0
    ) -> list[Notification]:
        """Wait until `done(notifications so far)`; AssertionError after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not done(list(self.notifications)):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"timed out after {timeout_s}s; received: {self.notifications}"
                    )
                self._changed.wait(left)
            return list(self.notifications)

    def close(self) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> NotificationReceiver:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()
