"""Socket Mode for the Slack stand-in: ``apps.connections.open`` and the WebSocket link.

Slack's Socket Mode, as the app sees it:

1. The app calls ``apps.connections.open`` with its app-level token (``xapp-``) and gets a
   single-use ``url`` with a ``ticket``.
2. It opens a WebSocket to that URL; Slack greets it with ``{"type": "hello", ...}``.
3. Slack sends each slash command, interaction and event as an envelope
   ``{"envelope_id", "type", "payload", "accepts_response_payload"}`` (``events_api``
   envelopes also carry ``retry_attempt`` and ``retry_reason``), and the app acks with
   ``{"envelope_id": ..., "payload": ...}`` on the socket within 3 seconds.
4. An ``events_api`` envelope that is not acked in time is delivered again, as a new
   envelope with the same payload (the same ``event_id``), ``retry_attempt`` one higher
   and ``retry_reason`` ``"timeout"``; after three retries Slack gives up.
   Slash commands and interactions are not retried: the user sees an error instead.

Here the URL is ``ws://`` on the stand-in's own port (slack_sdk's built-in client speaks
plain WebSocket to any port but 443). Tests push envelopes with `SocketHub.push` (or
``POST /sandbox/socket/push``) and can lose acks (`SocketHub.lose_acks`), drop every
socket (`SocketHub.drop_connections`) or ask for a reconnection the way Slack does
(`SocketHub.request_refresh`: a ``disconnect`` message, then the close) to exercise
retries and reconnection.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import logging
import socket
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from sandbox.slack import seed

logger = logging.getLogger(__name__)

WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
ENVELOPE_TYPES = ("slash_commands", "interactive", "events_api")
MAX_EVENT_RETRIES = 3
MAX_FRAME_BYTES = 1024 * 1024
"""Larger frames from the app end the link (an ack is a few hundred bytes)."""

_TEXT, _CLOSE, _PING, _PONG, _CONTINUATION = 0x1, 0x8, 0x9, 0xA, 0x0


def accept_key(client_key: str) -> str:
    """The ``Sec-WebSocket-Accept`` answer to a client's ``Sec-WebSocket-Key`` (RFC 6455)."""
    digest = hashlib.sha1((client_key + WEBSOCKET_GUID).encode("ascii")).digest()
    return base64.b64encode(digest).decode("ascii")


def encode_frame(opcode: int, data: bytes) -> bytes:
    """One final, unmasked frame, as a server sends them."""
    head = bytes([0x80 | opcode])
    size = len(data)
    if size < 126:
        head += bytes([size])
    elif size < 1 << 16:
        head += bytes([126]) + struct.pack("!H", size)
    else:
        head += bytes([127]) + struct.pack("!Q", size)
    return head + data


def read_frame(stream: BinaryIO) -> tuple[bool, int, bytes]:
    """Read one frame from a client: (final, opcode, unmasked data).

    Raises ConnectionError when the peer closed the stream mid-frame or did not mask.
    """
    first, second = _read_exactly(stream, 2)
    final, opcode = bool(first & 0x80), first & 0x0F
    masked, size = bool(second & 0x80), second & 0x7F
    if size == 126:
        (size,) = struct.unpack("!H", _read_exactly(stream, 2))
    elif size == 127:
        (size,) = struct.unpack("!Q", _read_exactly(stream, 8))
    if not masked:
        raise ConnectionError("a client frame must be masked")
    if size > MAX_FRAME_BYTES:
        raise ConnectionError(f"a {size}-byte frame is larger than {MAX_FRAME_BYTES}")
    mask = _read_exactly(stream, 4)
    data = bytes(b ^ mask[i % 4] for i, b in enumerate(_read_exactly(stream, size)))
    return final, opcode, data


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    data = stream.read(size) if size else b""
    if len(data) < size:
        raise ConnectionError("the socket closed")
    return data


class Link:
    """One open WebSocket from the app."""

    def __init__(self, connection: socket.socket, number: int) -> None:
        self.connection = connection
        self.number = number
        self._send_lock = threading.Lock()
        self.open = True

    def send_text(self, message: dict[str, Any]) -> None:
        self._send(_TEXT, json.dumps(message).encode())

    def _send(self, opcode: int, data: bytes) -> None:
        with self._send_lock:
            self.connection.sendall(encode_frame(opcode, data))

    def close(self) -> None:
        """Drop the TCP connection without a close handshake, as a lost network does."""
        self.open = False
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.connection.close()


@dataclass
class Delivery:
    """One envelope as sent on a socket, and its ack once it came."""

    envelope: dict[str, Any]
    link: int
    sent_at: float
    acked: bool = False
    ack_payload: Any = None
    ack_lost: bool = False


@dataclass
class _Pending:
    envelope_type: str
    payload: dict[str, Any]
    accepts_response_payload: bool
    retry_attempt: int = 0
    deliveries: list[str] = field(default_factory=list)


class SocketHub:
    """Tickets, open links and envelopes of the stand-in's Socket Mode.

    Args:
        app_token: the app-level token ``apps.connections.open`` accepts.
        ack_timeout: how long an envelope waits for its ack (Slack: 3 seconds).
    """

    def __init__(self, app_token: str = seed.DEFAULT_APP_TOKEN, ack_timeout: float = 3.0):
        self.app_token = app_token
        self.ack_timeout = ack_timeout
        self._tickets: set[str] = set()
        self._links: list[Link] = []
        self._deliveries: dict[str, Delivery] = {}
        self._order: list[str] = []
        self._pending: dict[str, _Pending] = {}
        self._acks_to_lose = 0
        self._connections_made = 0
        self._changed = threading.Condition()
        self._timers: list[threading.Timer] = []
        self._closed = False

    # ---- apps.connections.open -----------------------------------------------------------

    def open_connection(self, token: str | None, base: str) -> dict[str, Any]:
        """The body of ``apps.connections.open`` for ``token`` (an app-level token)."""
        if not token:
            return {"ok": False, "error": "not_authed"}
        if not token.startswith("xapp-"):
            return {"ok": False, "error": "not_allowed_token_type"}
        if token != self.app_token:
            return {"ok": False, "error": "invalid_auth"}
        ticket = str(uuid.uuid4())
        with self._changed:
            self._tickets.add(ticket)
        host = base.removeprefix("http://")
        return {"ok": True, "url": f"ws://{host}/link/?ticket={ticket}&app_id={seed.API_APP_ID}"}

    def redeem(self, ticket: str) -> bool:
        """Whether ``ticket`` was issued and not used yet; using it spends it."""
        with self._changed:
            if ticket in self._tickets:
                self._tickets.remove(ticket)
                return True
            return False

    # ---- links ---------------------------------------------------------------------------

    def serve(self, connection: socket.socket, stream: BinaryIO) -> None:
        """Run one link until it closes: greet it, answer pings, take acks."""
        with self._changed:
            self._connections_made += 1
            link = Link(connection, self._connections_made)
            self._links.append(link)
            self._changed.notify_all()
        try:
            link.send_text(self._hello())
            self._flush_undelivered()
            self._read_loop(link, stream)
        except (ConnectionError, OSError) as exc:
            logger.debug("socket link %d ended: %s", link.number, exc)
        finally:
            link.open = False
            with self._changed:
                if link in self._links:
                    self._links.remove(link)
                self._changed.notify_all()

    def _read_loop(self, link: Link, stream: BinaryIO) -> None:
        message = b""
        message_opcode = _TEXT
        while link.open:
            final, opcode, data = read_frame(stream)
            if opcode == _PING:
                link._send(_PONG, data)
            elif opcode == _CLOSE:
                try:
                    link._send(_CLOSE, data[:2])
                finally:
                    link.close()
                return
            elif opcode in (_TEXT, _CONTINUATION):
                if opcode == _TEXT:
                    message, message_opcode = b"", opcode
                message += data
                if final and message_opcode == _TEXT:
                    self._received(message.decode("utf-8", "replace"))
                    message = b""

    def _hello(self) -> dict[str, Any]:
        with self._changed:
            count = len(self._links)
        return {
            "type": "hello",
            "num_connections": count,
            "debug_info": {"host": "applink-sandbox", "approximate_connection_time": 18060},
            "connection_info": {"app_id": seed.API_APP_ID},
        }

    @property
    def connections(self) -> int:
        """Links open now."""
        with self._changed:
            return len(self._links)

    @property
    def connections_made(self) -> int:
        """Links opened since the start, reconnections included."""
        with self._changed:
            return self._connections_made

    def wait_connected(self, count: int = 1, timeout: float = 30.0) -> None:
        """Wait until ``count`` links have ever been opened and one is open now."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not (self._connections_made >= count and self._links):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"expected {count} Socket Mode connection(s), {self._connections_made} made"
                    )
                self._changed.wait(remaining)

    def drop_connections(self) -> int:
        """Cut every open link (no close frame); return how many were cut."""
        with self._changed:
            links = list(self._links)
        for link in links:
            link.close()
        return len(links)

    def request_refresh(self, reason: str = "refresh_requested", grace: float = 1.0) -> int:
        """Tell every open link to reconnect, as Slack does before it recycles a server:
        a ``disconnect`` message, then the link is closed ``grace`` seconds later.
        Return how many links were told."""
        with self._changed:
            links = [link for link in self._links if link.open]
        message = {
            "type": "disconnect",
            "reason": reason,
            "debug_info": {"host": "applink-sandbox"},
        }
        for link in links:
            try:
                link.send_text(message)
            except OSError:
                continue
            timer = threading.Timer(grace, link.close)
            timer.daemon = True
            with self._changed:
                self._timers.append(timer)
            timer.start()
        return len(links)

    def close(self) -> None:
        with self._changed:
            self._closed = True
            timers = list(self._timers)
        for timer in timers:
            timer.cancel()
        self.drop_connections()

    # ---- envelopes -----------------------------------------------------------------------

    def push(
        self,
        envelope_type: str,
        payload: dict[str, Any],
        accepts_response_payload: bool | None = None,
    ) -> str:
        """Send ``payload`` to the app as an envelope; return its envelope_id.

        ``accepts_response_payload`` defaults as Slack sets it: true for slash commands
        (the ack may carry the answer) and view submissions (a ``response_action``), false
        for events, clicks and shortcuts. With no open link the envelope waits for one.
        """
        if envelope_type not in ENVELOPE_TYPES:
            raise ValueError(f"envelope type must be one of {', '.join(ENVELOPE_TYPES)}")
        if accepts_response_payload is None:
            accepts_response_payload = envelope_type == "slash_commands" or (
                envelope_type == "interactive" and payload.get("type") == "view_submission"
            )
        pending = _Pending(envelope_type, copy.deepcopy(payload), accepts_response_payload)
        return self._deliver(pending)

    def _deliver(self, pending: _Pending) -> str:
        envelope_id = str(uuid.uuid4())
        envelope: dict[str, Any] = {
            "envelope_id": envelope_id,
            "payload": pending.payload,
            "type": pending.envelope_type,
            "accepts_response_payload": pending.accepts_response_payload,
        }
        if pending.envelope_type == "events_api":
            envelope["retry_attempt"] = pending.retry_attempt
            envelope["retry_reason"] = "timeout" if pending.retry_attempt else ""
        pending.deliveries.append(envelope_id)
        with self._changed:
            self._pending[envelope_id] = pending
            self._order.append(envelope_id)
            self._deliveries[envelope_id] = Delivery(envelope, link=0, sent_at=0.0)
        self._send(envelope_id)
        return envelope_id

    def _send(self, envelope_id: str) -> None:
        with self._changed:
            links = [link for link in self._links if link.open]
            delivery = self._deliveries[envelope_id]
            if not links or delivery.link:
                return
            link = links[-1]
            delivery.link, delivery.sent_at = link.number, time.time()
        try:
            link.send_text(delivery.envelope)
        except OSError:
            with self._changed:
                delivery.link = 0  # goes out again on the next link
            return
        self._arm_retry(envelope_id)

    def _flush_undelivered(self) -> None:
        with self._changed:
            waiting = [e for e in self._order if not self._deliveries[e].link]
        for envelope_id in waiting:
            self._send(envelope_id)

    def _arm_retry(self, envelope_id: str) -> None:
        pending = self._pending[envelope_id]
        if pending.envelope_type != "events_api" or pending.retry_attempt >= MAX_EVENT_RETRIES:
            return
        timer = threading.Timer(self.ack_timeout, self._retry_if_unacked, (envelope_id,))
        timer.daemon = True
        with self._changed:
            if self._closed:
                return
            self._timers.append(timer)
        timer.start()

    def _retry_if_unacked(self, envelope_id: str) -> None:
        with self._changed:
            if self._closed or self._deliveries[envelope_id].acked:
                return
            pending = self._pending[envelope_id]
        retry = _Pending(
            pending.envelope_type,
            pending.payload,
            pending.accepts_response_payload,
            retry_attempt=pending.retry_attempt + 1,
            deliveries=pending.deliveries,
        )
        logger.info("envelope %s not acked in time; delivering the event again", envelope_id)
        self._deliver(retry)

    def _received(self, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            logger.info("a socket message that is not JSON was ignored")
            return
        envelope_id = message.get("envelope_id") if isinstance(message, dict) else None
        with self._changed:
            delivery = self._deliveries.get(str(envelope_id))
            if delivery is None or delivery.acked:
                return
            if self._acks_to_lose > 0:
                self._acks_to_lose -= 1
                delivery.ack_lost = True
                return
            delivery.acked = True
            delivery.ack_payload = message.get("payload")
            self._changed.notify_all()

    def lose_acks(self, count: int = 1) -> None:
        """Drop the next ``count`` acks on the way, as if they never reached Slack."""
        with self._changed:
            self._acks_to_lose += count

    def wait_ack(self, envelope_id: str, timeout: float = 30.0) -> Any:
        """Wait for the app's ack of ``envelope_id``; return its payload (None if empty).

        Raises TimeoutError when no ack came in time.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while not self._deliveries[envelope_id].acked:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"envelope {envelope_id} was not acked")
                self._changed.wait(remaining)
            return copy.deepcopy(self._deliveries[envelope_id].ack_payload)

    def deliveries(self) -> list[dict[str, Any]]:
        """Every envelope sent or waiting, oldest first, with its ack state."""
        with self._changed:
            return [
                {
                    "envelope": copy.deepcopy(self._deliveries[e].envelope),
                    "link": self._deliveries[e].link,
                    "acked": self._deliveries[e].acked,
                    "ack_lost": self._deliveries[e].ack_lost,
                    "ack": copy.deepcopy(self._deliveries[e].ack_payload),
                }
                for e in self._order
            ]
