"""The App Home tab: a user's own open requests, and the requests waiting for them.

Published with ``views.publish`` when the user opens the tab, and again after they act on
it (End now, Approve, Deny), so what they see follows what they did. The buttons are the
same as elsewhere and every click is authorized again on the server.
"""

from __future__ import annotations

import logging

from slack_sdk import WebClient

from bot import messages
from bot.gate import AccessGate
from jitcore.engine import Engine
from jitcore.model import AccessRequest, RequestStatus

log = logging.getLogger(__name__)

OPEN_STATUSES = (
    RequestStatus.PENDING,
    RequestStatus.APPROVED,
    RequestStatus.OPENING,
    RequestStatus.ACTIVE,
    RequestStatus.CLOSING,
)
"""What ``/jit list`` and App Home show as the user's: closing included, because a port
stays open until its rules are gone (in Defender mode, until Defender's end time)."""


def publish_home(engine: Engine, gate: AccessGate, client: WebClient, user_id: str) -> None:
    """Build and publish ``user_id``'s home tab, after the same checks as ``/jit list``."""
    refusal = gate.home_refusal(user_id)
    if refusal is not None:
        view = messages.home_refused_view(refusal)
    else:
        mine = engine.requests_of(user_id, OPEN_STATUSES)
        waiting = awaiting(engine, user_id) if approves_anything(engine, user_id) else None
        view = messages.home_view(mine, waiting, engine.clock())
    client.views_publish(user_id=user_id, view=view)
    log.info("home tab published for %s", user_id)


def approves_anything(engine: Engine, user_id: str) -> bool:
    return engine.approves_anything(user_id)


def awaiting(engine: Engine, user_id: str) -> list[AccessRequest]:
    """Pending requests ``user_id`` may decide: an approver of their policy, not theirs,
    and not already approved by them (a request needing two approvals)."""
    return [
        request
        for request in engine.store.requests_with_status((RequestStatus.PENDING,))
        if request.requester_id != user_id
        and user_id in engine.approvers_of(request)
        and (request.id is None or user_id not in engine.approvers_who_approved(request.id))
    ]
