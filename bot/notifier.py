"""The engine's notifier, for Slack: one approval message per request, updated in place,
a thread for its whole life, and direct messages to the requester.

The requester's DM is what matters most, so it goes first, and its failure is raised:
the engine keeps the notice and tries again. Updating the approval message and replying
in its thread are best effort (the message may have been deleted); their failures are
logged, and never stop the DM or repeat it.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot import messages
from jitcore.model import AccessRequest, Grant, RequestStatus
from jitcore.notify import Posted, RestoreReport, send_once
from jitcore.source_flags import SourceFlagger

log = logging.getLogger(__name__)


class SlackNotifier:
    def __init__(
        self,
        client: WebClient,
        flagger: SourceFlagger | None = None,
        audit_channel: str | None = None,
    ) -> None:
        self.client = client
        self.flagger = flagger or SourceFlagger()
        self.audit_channel = audit_channel

    def request_submitted(self, request: AccessRequest) -> Posted | None:
        assert request.approval_channel is not None
        response = self.client.chat_postMessage(
            channel=request.approval_channel,
            text=messages.request_fallback(request),
            blocks=self._approval_blocks(request),
            unfurl_links=False,
            unfurl_media=False,
        )
        return Posted(channel=response["channel"], ts=response["ts"])

    def request_approved(self, request: AccessRequest) -> None:
        self._best_effort(self._update_approval_message, request)

    def request_denied(self, request: AccessRequest) -> None:
        self._direct(request, messages.denied_text(request))
        self._best_effort(self._update_approval_message, request)

    def request_granted(self, request: AccessRequest, grants: list[Grant]) -> None:
        self._tell_everyone(request, messages.granted_text(request, grants))

    def request_failed(self, request: AccessRequest, reason: str) -> None:
        self._tell_everyone(request, messages.failed_text(request, reason))

    def request_closed(self, request: AccessRequest, report: RestoreReport) -> None:
        self._tell_everyone(request, messages.closed_text(request, report))

    def request_expired_unapproved(self, request: AccessRequest) -> None:
        self._direct(request, messages.expired_unapproved_text(request))
        self._best_effort(self._update_approval_message, request)

    def request_extended(self, request: AccessRequest, args: dict[str, Any]) -> None:
        self._tell_everyone(request, messages.extended_text(request, str(args.get("by", ""))))

    def request_expiring(self, request: AccessRequest, args: dict[str, Any]) -> None:
        """DM the requester that access ends soon, with an Extend button; a warning that
        is no longer true (the request was extended or ended meanwhile) is dropped."""
        ends_at = request.ends_at
        if request.status != RequestStatus.ACTIVE or ends_at is None:
            return
        if ends_at.isoformat() != args.get("ends_at"):
            return
        now = datetime.now(UTC)
        extend_by = timedelta(seconds=float(args.get("extend_by_seconds") or 0))
        opened = self.client.conversations_open(users=request.requester_id)
        self.client.chat_postMessage(
            channel=opened["channel"]["id"],
            text=messages.expiring_text(request, now),
            blocks=messages.expiring_blocks(
                request, extend_by, now, defender=args.get("not_extendable") == "defender"
            ),
            unfurl_links=False,
        )

    def defender_closed(self, request: AccessRequest, args: dict[str, Any]) -> None:
        self._tell_everyone(request, messages.defender_closed_text(request, args))

    def defender_end_pending(self, request: AccessRequest, args: dict[str, Any]) -> None:
        self._tell_everyone(request, messages.defender_end_pending_text(request, args))

    def drift_detected(self, channel: str, findings: list[str]) -> None:
        self.client.chat_postMessage(
            channel=channel, text=messages.drift_text(findings), unfurl_links=False
        )

    def _tell_everyone(self, request: AccessRequest, text: str) -> None:
        self._direct(request, text)
        self._best_effort(self._thread, request, text)
        self._best_effort(self._update_approval_message, request)

    def _best_effort(self, step: Any, *args: Any) -> None:
        try:
            step(*args)
        except Exception as exc:
            error = exc.response.get("error") if isinstance(exc, SlackApiError) else None
            log.warning(
                "Slack refused %s for request %s: %s",
                step.__name__.strip("_"),
                args[0].id,
                error or type(exc).__name__,
            )

    def _update_approval_message(self, request: AccessRequest) -> None:
        if not (request.approval_channel and request.approval_ts):
            return
        if (request.decided_by or "").startswith("auto:"):
            text, blocks = messages.review_fallback(request), messages.review_blocks(request)
        else:
            text, blocks = messages.request_fallback(request), messages.approval_blocks(request)
        blocks = self._flagged(request, blocks)
        self.client.chat_update(
            channel=request.approval_channel, ts=request.approval_ts, text=text, blocks=blocks
        )

    # -- approval rules and the audit channel ---------------------------------------------

    def request_partly_approved(self, request: AccessRequest, args: dict[str, Any]) -> None:
        """Show everyone who approved so far; raised on failure, so the outbox retries it
        (the update is the whole of this notice)."""
        if not (request.approval_channel and request.approval_ts):
            return
        approved_by = [str(a) for a in args.get("approved_by", [])]
        required = int(args.get("required", 2))
        self.client.chat_update(
            channel=request.approval_channel,
            ts=request.approval_ts,
            text=messages.request_fallback(request),
            blocks=self._flagged(
                request, messages.partly_approved_blocks(request, approved_by, required)
            ),
        )

    def request_auto_approved(self, request: AccessRequest, rule: str) -> Posted | None:
        """Post the auto-approved request to the approval channel for review."""
        assert request.approval_channel is not None
        response = self.client.chat_postMessage(
            channel=request.approval_channel,
            text=messages.review_fallback(request),
            blocks=self._flagged(request, messages.review_blocks(request)),
            unfurl_links=False,
            unfurl_media=False,
        )
        return Posted(channel=response["channel"], ts=response["ts"])

    def request_reminded(self, request: AccessRequest, args: dict[str, Any]) -> None:
        """The reminder, in the approval thread (or the channel if the message is gone)."""
        if request.status != RequestStatus.PENDING or not request.approval_channel:
            return
        expires_at = datetime.fromisoformat(str(args["expires_at"]))
        approvers = [str(a) for a in args.get("approvers", [])]
        self.client.chat_postMessage(
            channel=request.approval_channel,
            thread_ts=request.approval_ts,
            text=messages.reminder_text(request, approvers, expires_at),
            unfurl_links=False,
        )

    def audit_line(self, request: AccessRequest, args: dict[str, Any]) -> None:
        if not self.audit_channel:
            return
        text = messages.audit_line(
            request,
            str(args.get("action", "")),
            str(args.get("actor", "")),
            dict(args.get("detail") or {}),
        )
        self.client.chat_postMessage(
            channel=self.audit_channel, text=text, unfurl_links=False, unfurl_media=False
        )

    def _approval_blocks(self, request: AccessRequest) -> list[dict[str, Any]]:
        return self._flagged(request, messages.approval_blocks(request))

    def _flagged(
        self, request: AccessRequest, blocks: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """``blocks`` with a warning after the summary when the source is private, shared
        (CGNAT) or a cloud provider's address."""
        flags = self.flagger.flags(request.source_prefix)
        if flags:
            blocks.insert(1, messages.source_flags_block(request, flags))
        return blocks

    def _thread(self, request: AccessRequest, text: str) -> None:
        if not (request.approval_channel and request.approval_ts):
            return
        channel, thread = request.approval_channel, request.approval_ts
        send_once(
            "thread",
            lambda: self.client.chat_postMessage(
                channel=channel, thread_ts=thread, text=text, unfurl_links=False
            ),
        )

    def _direct(self, request: AccessRequest, text: str) -> None:
        def send() -> None:
            opened = self.client.conversations_open(users=request.requester_id)
            self.client.chat_postMessage(
                channel=opened["channel"]["id"], text=text, unfurl_links=False
            )

        send_once("dm", send)
