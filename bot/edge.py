"""The HTTP edge in front of Bolt: size limit, signature, replay and malformed bodies.

Bolt parses a request's body before it checks the signature, so an unsigned request with
a broken body would reach the parser, and a failure there would be a 500 with a
traceback in the server log. Here every request to the Slack endpoint is checked first:
too large (413), unsigned, stale, tampered or replayed (401, logged without its body),
then handed to Bolt; a signed request that Bolt still cannot parse gets a 400.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from slack_sdk.signature import SignatureVerifier

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
"""Slack's largest payloads (a modal's state) are far below this."""

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class SlackEdge:
    """WSGI middleware guarding ``path``; other paths pass straight through."""

    def __init__(
        self,
        app: WsgiApp,
        signing_secret: str,
        first_sighting: Callable[[str], bool],
        path: str = "/slack/events",
    ) -> None:
        self.app = app
        self.path = path
        self.verifier = SignatureVerifier(signing_secret)
        self.first_sighting = first_sighting

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != self.path or environ.get("REQUEST_METHOD") != "POST":
            return self.app(environ, start_response)
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return _answer(start_response, "400 Bad Request", b'{"error": "invalid length"}')
        if length > MAX_BODY_BYTES:
            log.info("refused a %d-byte request to %s", length, self.path)
            return _answer(start_response, "413 Content Too Large", b'{"error": "too large"}')
        body = environ["wsgi.input"].read(length) if length else b""

        timestamp = environ.get("HTTP_X_SLACK_REQUEST_TIMESTAMP", "")
        signature = environ.get("HTTP_X_SLACK_SIGNATURE", "")
        if not self._valid(body, timestamp, signature):
            log.info("refused a request with a missing, stale or wrong signature")
            return _answer(start_response, "401 Unauthorized", b'{"error": "invalid request"}')
        try:
            first = self.first_sighting(signature)
        except Exception:
            log.warning("cannot record the request's signature (database unavailable?)")
            return _answer(start_response, "503 Service Unavailable", b'{"error": "unavailable"}')
        if not first:
            log.info("refused a replayed request (its signature was seen before)")
            return _answer(start_response, "401 Unauthorized", b'{"error": "replayed request"}')

        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        try:
            return list(self.app(environ, start_response))
        except Exception:
            log.exception("a signed request could not be handled")
            return _answer(start_response, "400 Bad Request", b'{"error": "malformed request"}')

    def _valid(self, body: bytes, timestamp: str, signature: str) -> bool:
        if not (timestamp.isascii() and timestamp.isdigit()) or not signature:
            return False
        if abs(time.time() - int(timestamp)) > 300:
            return False
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return False
        return self.verifier.is_valid(text, timestamp, signature)


def _answer(start_response: StartResponse, status: str, body: bytes) -> list[bytes]:
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]
