"""Socket Mode: Slack's requests over a WebSocket the bot opens, instead of HTTP requests.

Chosen by setting ``JITBOT_SLACK_APP_TOKEN`` (an app-level ``xapp-`` token). The bot asks
``apps.connections.open`` (on ``JITBOT_SLACK_API_URL``, like every other Web API call) for
a WebSocket URL and receives slash commands, clicks, form submissions and events on it;
slack_sdk's built-in client (no extra dependency) reconnects by itself when the link drops.
The HTTP port still serves /healthz, /readyz and /metrics, but not /slack/events.

There is no request signature in Socket Mode: the app token authenticates the link. What
the signature replay check does in HTTP mode, :class:`DedupingSocketModeHandler` does
here: Slack delivers an event again when its ack was late or lost, so each event is
handled once (by ``event_id``), and a repeated envelope is acked without being handled.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from slack_bolt import App
from slack_bolt.adapter.socket_mode import SocketModeHandler
from slack_sdk.errors import SlackApiError
from slack_sdk.socket_mode.builtin import SocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse

log = logging.getLogger(__name__)


class SocketModeRefused(RuntimeError):
    """Slack would not open a Socket Mode link; the message names the setting and Slack's
    error code, never the token."""


def delivery_key(request: SocketModeRequest) -> str:
    """What identifies one piece of work across Slack's deliveries of it.

    An event keeps its ``event_id`` when Slack delivers it again (with a new envelope);
    anything else is identified by its envelope.
    """
    payload = request.payload if isinstance(request.payload, dict) else {}
    if request.type == "events_api" and payload.get("event_id"):
        return f"socket-event:{payload['event_id']}"
    return f"socket-envelope:{request.envelope_id}"


class DedupingSocketModeHandler(SocketModeHandler):
    """Bolt's built-in Socket Mode handler, handling each delivery once.

    Args:
        first_sighting: records a key and says whether it is new (the same store the HTTP
            edge uses for signatures, so replicas agree on what was handled).
    """

    def __init__(
        self,
        app: App,
        app_token: str,
        first_sighting: Callable[[str], bool],
        ping_interval: float = 10.0,
    ) -> None:
        super().__init__(app, app_token, ping_interval=ping_interval)
        self.first_sighting = first_sighting

    def handle(self, client: SocketModeClient, req: SocketModeRequest) -> None:  # type: ignore[override]
        key = delivery_key(req)
        try:
            first = self.first_sighting(key)
        except Exception:
            # Not acked: Slack delivers an event again, and by then the database may answer.
            log.warning("cannot record a Socket Mode delivery (database unavailable?)")
            return
        if not first:
            log.info(
                "a repeated Socket Mode delivery (retry %s, %s) was acked, not handled again",
                req.retry_attempt,
                req.retry_reason or "no reason given",
            )
            client.send_socket_mode_response(SocketModeResponse(envelope_id=req.envelope_id))
            return
        super().handle(client, req)


def socket_mode_handler(
    bolt: App, app_token: str, first_sighting: Callable[[str], bool], ping_interval: float
) -> DedupingSocketModeHandler:
    """The handler for ``bolt``; call `connect` to open the link, ``close()`` to end it."""
    handler = DedupingSocketModeHandler(bolt, app_token, first_sighting, ping_interval)
    handler.client.logger = logging.getLogger("bot.socket_mode.client")
    return handler


def connect(handler: DedupingSocketModeHandler) -> None:
    """Open the first link; raise SocketModeRefused when Slack refuses the app token.

    Later links (after a drop) are opened by slack_sdk itself, which retries on errors.
    """
    try:
        handler.connect()
    except SlackApiError as exc:
        error = exc.response.get("error") if exc.response is not None else None
        raise SocketModeRefused(
            f"Slack refused to open a Socket Mode link ({error or 'no answer'}); check "
            "JITBOT_SLACK_APP_TOKEN (an app-level token with connections:write) and that "
            "Socket Mode is enabled for the app"
        ) from None
