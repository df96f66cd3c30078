"""A local stand-in for the Slack Web API, for tests, benchmarks and `jitbot sandbox`.

Point slack_sdk at it with ``WebClient(base_url=slack.url, token=slack.bot_token)``::

    with SlackServer() as slack:
        client = WebClient(base_url=slack.url, token=slack.bot_token)
        client.chat_postMessage(channel="C0OPS12345", text="hello")
        assert slack.calls("chat.postMessage")[0]["ok"]

Web API methods are served at ``POST|GET /api/<method>`` with JSON, form or multipart
bodies; the token may come as ``Authorization: Bearer``, or as a ``token`` form or query
field (as with Slack, a token inside a JSON body is not read). Error answers are HTTP 200
``{"ok": false, "error": ...}``; an injected rate limit is HTTP 429 with ``Retry-After``.

Implemented: api.test, auth.test, chat.postMessage, chat.update, chat.postEphemeral,
conversations.open, users.info, usergroups.users.list, views.open, views.update,
views.publish, and apps.connections.open (app-level ``xapp-`` token only) with its
Socket Mode WebSocket at ``/link/?ticket=...`` (see `sandbox.slack.socket_mode`).
Anything else answers ``unknown_method``.

Sandbox endpoints (no token needed):

- ``GET /sandbox/calls[?method=...]``: every recorded call, failed ones included, as
  ``{"method", "args", "time", "ok", "status", "response"}`` (args never hold the token).
- ``DELETE /sandbox/calls``: forget them.
- ``GET /sandbox/messages?channel=C...``: the channel's current messages (without
  ``channel``: an object of all channels).
- ``POST /sandbox/response/<name>``: a response_url; recorded with method
  ``"response_url"`` and the ``name``, answered ``text/plain`` ``ok`` as Slack does.
- ``POST /sandbox/socket/push``: ``{"type": "slash_commands"|"interactive"|"events_api",
  "payload": {...}, "wait": seconds}`` sends an envelope over Socket Mode and answers
  ``{"envelope_id", "ack"}`` once the app acked it (``ack`` null without ``wait``).
- ``GET /sandbox/socket/envelopes``: every envelope sent, with its ack.
- ``POST /sandbox/socket/drop``: cut every open Socket Mode connection.

Default seed (when ``users``/``channels``/``usergroups`` are not given; see
`sandbox.slack.seed`):

- team ``T0001ABCD`` "example"; the bot is ``U0BOTUSER1`` "jitbot", bot id ``B0JITBOT01``,
  app ``A0JITBOT01``; granted scopes `seed.DEFAULT_SCOPES` (with users:read.email).
- users (``users.info``):

  ============  =====  =====================  ====================  ===========================
  id            name   email                  tz                    note
  ============  =====  =====================  ====================  ===========================
  U0REQ12345    alice  alice@example.com      Europe/Berlin         the requester
  U0APPROVR1    bob    bob@example.com        America/New_York      approver, workspace admin
  U0APPROVR2    carol  carol@example.com      Europe/London         approver
  U0OUTSIDER    eve    eve@example.com        Asia/Tokyo            not an approver
  U0NOEMAIL1    dave   (none)                 Europe/London         profile without email
  U0DELETED1    frank  frank@example.com      (absent)              deleted: no tz/is_* fields
  U0GUEST001    grace  grace@partner...       America/Los_Angeles   guest: is_restricted
  U0READER01    rita   rita@example.com       Europe/London         Azure: Reader
  U0SECREAD1    sam    sam@example.com        Europe/London         Azure: Security Reader
  U0VMCONTR1    victor victor@example.com     Europe/London         Azure: VM Contributor
  U0OWNDENY1    oscar  oscar@example.com      Europe/London         Azure: Owner, but denied
  U0GROUPED1    gina   gina@example.com       Europe/London         Azure: role via a group
  U0NOMATCH1    henry  henry@contractor...    Europe/London         email not in Entra ID
  U0BOTUSER1    jitbot (none)                 Europe/London         is_bot
  ============  =====  =====================  ====================  ===========================

- channels: ``C0OPS12345`` "ops-access" (approvers), ``C0AUDIT001`` "jit-audit"; a DM
  ``D<user id without its U>`` exists once conversations.open (or a post to the user id)
  opens it.
- user group ``S0APPROVRS``: U0APPROVR1, U0APPROVR2.

Message timestamps are deterministic: the first post gets ``1700000000.000100`` (the ts in
the shared block_actions sample) and each post or edit adds 100 microseconds.
"""

from __future__ import annotations

import copy
import email.parser
import email.policy
import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from sandbox.slack import seed
from sandbox.slack.socket_mode import SocketHub, accept_key
from sandbox.slack.webapi import Body, SlackError, Workspace

logger = logging.getLogger(__name__)

# Form fields slack_sdk sends as JSON strings; they are recorded and used as JSON.
_JSON_FORM_FIELDS = ("blocks", "attachments", "view", "metadata")
_NO_AUTH_METHODS = frozenset({"api.test"})


@dataclass
class _Fault:
    method: str
    status: int
    retry_after: int
    remaining: int | None
    error: str | None

    def answer(self) -> tuple[int, dict[str, str], Body | str]:
        headers: dict[str, str] = {}
        if self.status == 429:
            headers["Retry-After"] = str(self.retry_after)
        if self.error is None and self.status >= 500:
            return self.status, headers, f"<html><body>{self.status} Server Error</body></html>"
        return self.status, headers, {"ok": False, "error": self.error or "ratelimited"}


class SlackServer:
    """The Slack Web API stand-in. See the module docstring for what it serves.

    Args:
        host: interface to bind; keep it on loopback.
        port: 0 picks a free port (read it back from `url`).
        bot_token: the only token the API accepts.
        users: user id -> users.info `user` object (`seed.make_user` builds one).
        channels: channel id -> name.
        usergroups: user group id -> member ids.
        scopes: the granted scopes; without users:read.email, users.info hides emails.
        app_token: the app-level token apps.connections.open accepts (Socket Mode).
        ack_timeout: how long a Socket Mode envelope waits for its ack before an event
            is delivered again (Slack: 3 seconds).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        bot_token: str = seed.DEFAULT_BOT_TOKEN,
        users: Mapping[str, Mapping[str, Any]] | None = None,
        channels: Mapping[str, str] | None = None,
        usergroups: Mapping[str, list[str]] | None = None,
        scopes: str = seed.DEFAULT_SCOPES,
        app_token: str = seed.DEFAULT_APP_TOKEN,
        ack_timeout: float = 3.0,
    ) -> None:
        self.host = host
        self.bot_token = bot_token
        self.app_token = app_token
        self.socket = SocketHub(app_token, ack_timeout)
        self.workspace = Workspace(users, channels, usergroups, scopes)
        self._port = port
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._calls: list[dict[str, Any]] = []
        self._faults: list[_Fault] = []
        self._delays: list[list[Any]] = []
        self._delays_seen = 0
        self._changed = threading.Condition()

    # ---- lifecycle -------------------------------------------------------------------

    def start(self) -> SlackServer:
        """Bind and serve in a background thread."""
        if self._httpd is not None:
            return self
        httpd = ThreadingHTTPServer((self.host, self._port), _Handler)
        httpd.daemon_threads = True
        httpd.sandbox = self  # type: ignore[attr-defined]
        self._httpd = httpd
        self._port = httpd.server_address[1]
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},  # stop() waits for one poll
            name=f"slack-sandbox-{self._port}",
            daemon=True,
        )
        self._thread.start()
        logger.info("Slack sandbox listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving and close the socket; safe to call twice."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self.socket.close()
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        logger.info("Slack sandbox on port %s stopped", self._port)

    def __enter__(self) -> SlackServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ---- addresses -------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self._port}"

    @property
    def url(self) -> str:
        """The Web API base URL, for `WebClient(base_url=...)`."""
        return f"{self.base}/api/"

    def response_url(self, name: str) -> str:
        """A response_url on this server; POSTs to it are recorded as "response_url" calls."""
        return f"{self.base}/sandbox/response/{quote(name, safe='')}"

    # ---- inspection ------------------------------------------------------------------

    def calls(self, method: str | None = None) -> list[dict[str, Any]]:
        """Recorded calls, oldest first, optionally only those of one method."""
        with self._changed:
            return copy.deepcopy(
                [c for c in self._calls if method is None or c["method"] == method]
            )

    def clear_calls(self) -> None:
        with self._changed:
            self._calls.clear()

    def wait_for(self, method: str, count: int = 1, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Wait until `count` calls of `method` are recorded (for work done after an ack).

        Raises TimeoutError naming what was recorded instead.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [c for c in self._calls if c["method"] == method]
                remaining = deadline - time.monotonic()
                if len(found) >= count or remaining <= 0:
                    break
                self._changed.wait(remaining)
        if len(found) < count:
            seen = [c["method"] for c in self.calls()]
            raise TimeoutError(f"{count} {method} call(s) expected, got {len(found)}; seen {seen}")
        return copy.deepcopy(found)

    def messages(self, channel: str) -> list[Body]:
        """The channel's current messages, oldest first (thread replies carry thread_ts)."""
        return self.workspace.messages(channel)

    # ---- faults ----------------------------------------------------------------------

    def add_fault(
        self,
        method: str,
        status: int | None = None,
        retry_after: int = 1,
        times: int | None = 1,
        error: str | None = None,
    ) -> None:
        """Make the next `times` calls of `method` fail (None: until clear_faults).

        With no `error` the answer is HTTP 429 `ratelimited` with `Retry-After`; with an
        `error` it is HTTP 200 `{"ok": false, "error": error}` unless `status` says
        otherwise. A 5xx status without `error` answers an HTML page, as Slack's edge
        does. `method` may be "response_url" or "*" (any call).
        """
        if status is None:
            status = 429 if error is None else 200
        with self._changed:
            self._faults.append(_Fault(method, status, retry_after, times, error))

    def add_delay(self, method: str, seconds: float, times: int = 1) -> None:
        """Answer the next `times` calls of `method` only after `seconds` (a slow Slack).

        `delays_seen` counts the calls held so far, so a test can act while one is held.
        """
        with self._changed:
            self._delays.append([method, seconds, times])

    @property
    def delays_seen(self) -> int:
        return self._delays_seen

    def clear_faults(self) -> None:
        with self._changed:
            self._faults.clear()
            self._delays.clear()

    def _take_delay(self, method: str) -> float:
        with self._changed:
            for delay in self._delays:
                if delay[0] in (method, "*"):
                    delay[2] -= 1
                    if delay[2] <= 0:
                        self._delays.remove(delay)
                    self._delays_seen += 1
                    return float(delay[1])
        return 0.0

    def _take_fault(self, method: str) -> _Fault | None:
        with self._changed:
            for fault in self._faults:
                if fault.method in (method, "*"):
                    if fault.remaining is not None:
                        fault.remaining -= 1
                        if fault.remaining <= 0:
                            self._faults.remove(fault)
                    return fault
        return None

    def _record(self, call: dict[str, Any]) -> None:
        with self._changed:
            self._calls.append(call)
            self._changed.notify_all()

    # ---- request handling --------------------------------------------------------------

    def _api_call(self, method: str, args: dict[str, Any], token: str | None) -> _Answer:
        hold = self._take_delay(method)
        if hold:
            time.sleep(hold)
        fault = self._take_fault(method)
        if fault is not None:
            status, headers, body = fault.answer()
            return _Answer(status, body, headers)
        if method == "apps.connections.open":
            return _Answer(200, self.socket.open_connection(token, self.base))
        if token is not None and token.startswith("xapp-"):
            return _Answer(200, {"ok": False, "error": "not_allowed_token_type"})
        if method not in self.workspace.methods:
            return _Answer(200, SlackError("unknown_method", req_method=method).body())
        if method not in _NO_AUTH_METHODS and token != self.bot_token:
            return _Answer(
                200, {"ok": False, "error": "not_authed" if not token else "invalid_auth"}
            )

        try:
            body = self.workspace.call(method, args)
        except SlackError as error:
            body = error.body()
        return _Answer(200, body, {"x-oauth-scopes": self.workspace.scopes})

    def _response_url_call(self, raw: bytes, content_type: str) -> _Answer:
        fault = self._take_fault("response_url")
        if fault is not None:
            status, headers, _ = fault.answer()
            return _Answer(status, fault.error or "rate_limited", headers)
        try:
            payload = _parse_response_url_body(raw, content_type)
        except ValueError:
            return _Answer(400, "invalid_payload")
        if not (payload.get("delete_original") or _has_content(payload)):
            return _Answer(400, "no_text")
        return _Answer(200, "ok")


@dataclass
class _Answer:
    status: int
    body: Body | str
    headers: dict[str, str] | None = None

    @property
    def ok(self) -> bool:
        if isinstance(self.body, dict):
            return bool(self.body.get("ok"))
        return self.status == 200


class _Handler(BaseHTTPRequestHandler):
    server_version = "SlackSandbox/1.0"

    @property
    def sandbox(self) -> SlackServer:
        return self.server.sandbox  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:
        # The query string may carry a token: log the path only.
        logger.debug("%s %s", self.command, urlsplit(self.path).path)

    def do_GET(self) -> None:
        self._route()

    def do_POST(self) -> None:
        self._route()

    def do_DELETE(self) -> None:
        self._route()

    def _route(self) -> None:
        parts = urlsplit(self.path)
        path = parts.path
        if path.startswith("/api/") and self.command in ("GET", "POST"):
            self._handle_api(path[len("/api/") :], parts.query)
        elif path.startswith("/sandbox/response/") and self.command == "POST":
            self._handle_response_url(unquote(path[len("/sandbox/response/") :]))
        elif path == "/sandbox/calls":
            self._handle_calls(parts.query)
        elif path == "/sandbox/messages" and self.command == "GET":
            self._handle_messages(parts.query)
        elif path == "/link/" and self.command == "GET":
            self._handle_socket_link(parts.query)
        elif path.startswith("/sandbox/socket/"):
            self._handle_socket_sandbox(path[len("/sandbox/socket/") :])
        else:
            self._send(_Answer(404, {"ok": False, "error": "not_found"}))

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _handle_api(self, method: str, query: str) -> None:
        raw = self._read_body()
        try:
            args = _parse_args(raw, self.headers.get("Content-Type", ""), query)
        except ValueError:
            self._finish_api(method, {}, _Answer(200, {"ok": False, "error": "invalid_json"}))
            return

        token = _bearer(self.headers.get("Authorization")) or args.pop("_form_token", None)
        answer = self.sandbox._api_call(method, args, token)
        self._finish_api(method, args, answer)

    def _finish_api(self, method: str, args: dict[str, Any], answer: _Answer) -> None:
        args.pop("_form_token", None)
        self.sandbox._record(_call_record(method, args, answer))
        self._send(answer)

    def _handle_response_url(self, name: str) -> None:
        raw = self._read_body()
        content_type = self.headers.get("Content-Type", "")
        answer = self.sandbox._response_url_call(raw, content_type)
        try:
            args = _parse_response_url_body(raw, content_type)
        except ValueError:
            args = {"_raw": raw.decode("utf-8", "replace")}
        record = _call_record("response_url", args, answer)
        record["name"] = name
        self.sandbox._record(record)
        self._send(answer)

    def _handle_socket_link(self, query: str) -> None:
        """The WebSocket upgrade for a ticket from apps.connections.open, then the link."""
        ticket = dict(parse_qsl(query)).get("ticket", "")
        key = self.headers.get("Sec-WebSocket-Key", "")
        upgrade = self.headers.get("Upgrade", "").lower() == "websocket"
        if not (upgrade and key):
            self._send(_Answer(400, "expected a WebSocket upgrade"))
            return
        if self.headers.get("Sec-WebSocket-Version", "").strip() != "13":
            self._send(_Answer(426, "WebSocket version 13 only", {"Sec-WebSocket-Version": "13"}))
            return
        if not self.sandbox.socket.redeem(ticket):
            self._send(_Answer(401, "invalid or used ticket"))
            return
        self.send_response(101, "Switching Protocols")
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept_key(key))
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        self.sandbox.socket.serve(self.connection, self.rfile)

    def _handle_socket_sandbox(self, action: str) -> None:
        hub = self.sandbox.socket
        if action == "envelopes" and self.command == "GET":
            self._send_json(200, hub.deliveries())
        elif action == "drop" and self.command == "POST":
            self._send_json(200, {"ok": True, "dropped": hub.drop_connections()})
        elif action == "push" and self.command == "POST":
            try:
                request = json.loads(self._read_body() or b"{}")
                envelope_id = hub.push(request.get("type", ""), request.get("payload") or {})
            except (ValueError, AttributeError) as exc:
                self._send_json(400, {"ok": False, "error": str(exc)})
                return
            wait = float(request.get("wait") or 0)
            try:
                ack = hub.wait_ack(envelope_id, wait) if wait > 0 else None
            except TimeoutError:
                answer = {"ok": False, "error": "not_acked", "envelope_id": envelope_id}
                self._send_json(504, answer)
                return
            self._send_json(200, {"ok": True, "envelope_id": envelope_id, "ack": ack})
        else:
            self._send(_Answer(404, {"ok": False, "error": "not_found"}))

    def _handle_calls(self, query: str) -> None:
        if self.command == "DELETE":
            self.sandbox.clear_calls()
            self._send(_Answer(200, {"ok": True}))
            return
        method = dict(parse_qsl(query)).get("method")
        self._send_json(200, self.sandbox.calls(method))

    def _handle_messages(self, query: str) -> None:
        channel = dict(parse_qsl(query)).get("channel")
        if channel:
            self._send_json(200, self.sandbox.messages(channel))
        else:
            self._send_json(200, self.sandbox.workspace.all_messages())

    def _send(self, answer: _Answer) -> None:
        if isinstance(answer.body, dict):
            self._send_json(answer.status, answer.body, answer.headers)
            return
        content_type = "text/html" if answer.body.startswith("<html>") else "text/plain"
        self._send_bytes(answer.status, answer.body.encode(), content_type, answer.headers)

    def _send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self._send_bytes(status, data, "application/json; charset=utf-8", headers)

    def _send_bytes(
        self, status: int, data: bytes, content_type: str, headers: dict[str, str] | None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


def _call_record(method: str, args: dict[str, Any], answer: _Answer) -> dict[str, Any]:
    return {
        "method": method,
        "args": args,
        "time": time.time(),
        "ok": answer.ok,
        "status": answer.status,
        "response": answer.body,
    }


def _bearer(header: str | None) -> str | None:
    if header and header.lower().startswith("bearer "):
        return header[len("bearer ") :].strip() or None
    return None


def _parse_args(raw: bytes, content_type: str, query: str) -> dict[str, Any]:
    """Merge query and body arguments; a form `token` is moved to `_form_token`.

    Raises ValueError for a JSON body that does not parse to an object.
    """
    args: dict[str, Any] = dict(parse_qsl(query, keep_blank_values=True))
    media_type = content_type.split(";")[0].strip().lower()
    if media_type == "application/json":
        body = json.loads(raw or b"{}")
        if not isinstance(body, dict):
            raise ValueError("JSON body is not an object")
        args.update({k: v for k, v in body.items() if k != "token"})
    elif media_type == "multipart/form-data":
        args.update(_parse_multipart(raw, content_type))
    elif raw:
        args.update(parse_qsl(raw.decode("utf-8"), keep_blank_values=True))

    if "token" in args:
        args["_form_token"] = args.pop("token")
    for name in _JSON_FORM_FIELDS:
        if name in args:
            args[name] = _maybe_json(args[name])
    return args


def _maybe_json(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def _parse_multipart(raw: bytes, content_type: str) -> dict[str, Any]:
    head = f"Content-Type: {content_type}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
    fields: dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        payload = part.get_payload(decode=True) or b""
        filename = part.get_filename()
        if filename:
            fields[str(name)] = {"filename": filename, "size": len(payload)}
        else:
            fields[str(name)] = payload.decode("utf-8", "replace")
    return fields


def _parse_response_url_body(raw: bytes, content_type: str) -> dict[str, Any]:
    """A response_url body: JSON, or a form with a `payload` JSON field."""
    if "application/x-www-form-urlencoded" in content_type.lower():
        payload = dict(parse_qsl(raw.decode("utf-8"))).get("payload", "")
        body = json.loads(payload)
    else:
        body = json.loads(raw or b"null")
    if not isinstance(body, dict):
        raise ValueError("response_url body is not a JSON object")
    return body


def _has_content(payload: Mapping[str, Any]) -> bool:
    return any(payload.get(field) for field in ("text", "blocks", "attachments"))
