"""Every text and Block Kit payload users see, built in one place.

Anything that came from a user (a reason, a VM name, a source typed in chat, an error
that quotes them) passes through :func:`escape` so that ``<!channel>``, ``<@U123>`` or a
link in it is shown as text and pings or links nobody.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from jitcore.durations import format_duration
from jitcore.model import AccessRequest, Grant, RequestStatus
from jitcore.notify import RestoreReport

APPROVE_ACTION = "jit_approve"
DENY_ACTION = "jit_deny"

HELP_TEXT = "\n".join(
    [
        "*/jit* asks for just-in-time network access to an Azure VM.",
        "• `/jit request <vm> <ports> <duration> [from <ip|cidr>] [because <reason>]`"
        " — e.g. `/jit request vm-web01 22 2h from 203.0.113.7 because deploy fix`",
        "• `/jit list` — your pending and active requests",
        "• `/jit revoke <id>` — end access now (requester or approver)",
        "• `/jit help` — this text",
        "Durations look like `90m`, `2h`, `1h30m`; ports like `22` or `22,3389`.",
    ]
)


def escape(text: str) -> str:
    """Escape Slack mrkdwn control characters (``&``, ``<``, ``>``) in untrusted text."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def mention(user_id: str) -> str:
    """A user mention; the id is checked so no text can smuggle markup through it."""
    if not user_id.isalnum():
        return escape(user_id)
    return f"<@{user_id}>"


def when(moment: datetime, now: datetime | None = None) -> str:
    """A time shown in each reader's own time zone by Slack, with UTC and how far away."""
    now = now or datetime.now(UTC)
    utc_text = moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    epoch = int(moment.timestamp())
    relative = _relative(moment - now)
    return f"<!date^{epoch}^{{date_short_pretty}} {{time}}|{utc_text}> ({utc_text}, {relative})"


def _relative(delta: timedelta) -> str:
    """``in 2h`` / ``3m ago``, rounded to the minute once it is a minute or more away."""
    seconds = abs(delta.total_seconds())
    if seconds >= 60:
        seconds = round(seconds / 60) * 60
    text = format_duration(timedelta(seconds=round(seconds)))
    return f"in {text}" if delta > timedelta(0) else f"{text} ago"


def error_text(message: str) -> str:
    return f":no_entry: {escape(message)}"


def usage_error(message: str, usage: str | None) -> str:
    text = error_text(message)
    if usage:
        text += f"\nUsage: `{escape(usage)}`"
    return text


def submitted_ack(request: AccessRequest) -> str:
    return (
        f"Request #{request.id} for port {request.ports} on *{escape(request.vm_name)}* "
        f"({format_duration(timedelta(seconds=request.duration_seconds))}) "
        f"was sent to the approvers in <#{request.approval_channel}>."
    )


def _summary_fields(request: AccessRequest) -> list[dict[str, str]]:
    duration = format_duration(timedelta(seconds=request.duration_seconds))
    reason = escape(request.reason) if request.reason else "_none given_"
    return [
        {"type": "mrkdwn", "text": f"*Requester*\n{mention(request.requester_id)}"},
        {"type": "mrkdwn", "text": f"*VM*\n{escape(request.vm_name)}"},
        {"type": "mrkdwn", "text": f"*Port(s)*\n{request.ports}/{request.protocol}"},
        {"type": "mrkdwn", "text": f"*Source*\n`{escape(request.source_prefix)}`"},
        {"type": "mrkdwn", "text": f"*Duration*\n{duration}"},
        {"type": "mrkdwn", "text": f"*Reason*\n{reason}"},
    ]


def request_fallback(request: AccessRequest) -> str:
    return (
        f"JIT access request #{request.id}: port {request.ports} on "
        f"{escape(request.vm_name)} from {escape(request.source_prefix)}"
    )


def approval_blocks(request: AccessRequest) -> list[dict[str, Any]]:
    """The message approvers see, with Approve and Deny buttons while it is pending."""
    blocks: list[dict[str, Any]] = [
        {
            "type": "section",
            "block_id": f"jit-req-{request.id}-summary",
            "text": {
                "type": "mrkdwn",
                "text": (
                    f"*JIT access request* `#{request.id}` (policy `{escape(request.policy_name)}`)"
                ),
            },
            "fields": _summary_fields(request),
        }
    ]
    if request.status == RequestStatus.PENDING:
        blocks.append(
            {
                "type": "actions",
                "block_id": f"jit-req-{request.id}-actions",
                "elements": [
                    {
                        "type": "button",
                        "action_id": APPROVE_ACTION,
                        "text": {"type": "plain_text", "text": "Approve"},
                        "style": "primary",
                        "value": str(request.id),
                    },
                    {
                        "type": "button",
                        "action_id": DENY_ACTION,
                        "text": {"type": "plain_text", "text": "Deny"},
                        "style": "danger",
                        "value": str(request.id),
                    },
                ],
            }
        )
    else:
        blocks.append(
            {
                "type": "context",
                "block_id": f"jit-req-{request.id}-status",
                "elements": [{"type": "mrkdwn", "text": status_line(request)}],
            }
        )
    return blocks


def status_line(request: AccessRequest) -> str:
    by = f" by {mention(request.decided_by)}" if request.decided_by else ""
    match request.status:
        case RequestStatus.APPROVED | RequestStatus.OPENING:
            return f":hourglass_flowing_sand: Approved{by}; opening access…"
        case RequestStatus.ACTIVE:
            assert request.ends_at is not None
            return f":unlock: Approved{by}; open until {when(request.ends_at)}"
        case RequestStatus.DENIED:
            note = f": {escape(request.decision_note)}" if request.decision_note else ""
            return f":x: Denied{by}{note}"
        case RequestStatus.CLOSING:
            return ":hourglass_flowing_sand: Closing; removing the rules…"
        case RequestStatus.CLOSED:
            return ":lock: Access expired; the network rules are restored"
        case RequestStatus.REVOKED:
            return ":lock: Access ended early; the network rules are restored"
        case RequestStatus.EXPIRED:
            return ":zzz: Nobody decided in time; the request expired"
        case RequestStatus.FAILED:
            return f":warning: Failed: {escape(request.failure_reason or 'unknown reason')}"
    return escape(request.status)


def already_decided(request_id: int, status: str, decided_by: str | None) -> str:
    by = f" by {mention(decided_by)}" if decided_by else ""
    return f"Request #{request_id} was already {escape(status)}{by}; nothing changed."


def granted_text(request: AccessRequest, grants: list[Grant]) -> str:
    assert request.ends_at is not None
    rules = ", ".join(
        f"`{escape(g.rule_name)}` in `{escape(g.nsg_id.rsplit('/', 1)[-1])}` "
        f"(priority {g.priority})"
        for g in grants
        if g.state == "present"
    )
    return (
        f":unlock: Access granted for request #{request.id}: "
        f"port {request.ports}/{request.protocol} on *{escape(request.vm_name)}* "
        f"from `{escape(request.source_prefix)}` until "
        f"{when(request.ends_at)}.\nRules created: {rules or 'none'}"
    )


def denied_text(request: AccessRequest) -> str:
    note = f" Reason: {escape(request.decision_note)}" if request.decision_note else ""
    return (
        f":x: Request #{request.id} for port {request.ports} on *{escape(request.vm_name)}* was "
        f"denied by {mention(request.decided_by or '')}. Nothing was opened.{note}"
    )


def failed_text(request: AccessRequest, reason: str) -> str:
    return (
        f":warning: Request #{request.id} for *{escape(request.vm_name)}* failed: "
        f"{escape(reason)}\n"
        "Nothing is left open."
    )


def closed_text(request: AccessRequest, report: RestoreReport) -> str:
    how = "was revoked" if request.status == RequestStatus.REVOKED else "expired"
    text = (
        f":lock: Access for request #{request.id} (port {request.ports} on "
        f"*{escape(request.vm_name)}*) {how}. "
    )
    if report.restored:
        text += "The network rules are restored exactly as they were."
    else:
        changes = "; ".join(escape(c) for c in report.changes_by_others)
        text += (
            "jitbot's rules are removed. The NSG differs from before the grant because of "
            f"changes made by others, left untouched: {changes}"
        )
    return text + " Sessions already established are not cut by Azure."


def expired_unapproved_text(request: AccessRequest) -> str:
    return (
        f":zzz: Request #{request.id} for *{escape(request.vm_name)}* expired: nobody approved "
        "it in time. Ask again if you still need access."
    )


def list_text(requests: list[AccessRequest], now: datetime) -> str:
    if not requests:
        return "You have no pending or active requests."
    lines = []
    for request in requests:
        line = (
            f"• #{request.id} {escape(request.vm_name)} port {request.ports} from "
            f"`{escape(request.source_prefix)}`: {request.status}"
        )
        if request.status == RequestStatus.ACTIVE and request.ends_at:
            line += f", {format_duration(request.ends_at - now)} left"
        lines.append(line)
    return "\n".join(lines)


def revoked_ack(request_id: int) -> str:
    return f"Ending access for request #{request_id}; the rules are being removed."


def missing_source() -> str:
    return error_text(
        "say where you will connect from: add `from <your public IP or CIDR>`, "
        "e.g. `from 203.0.113.7`"
    )


def drift_text(findings: list[str]) -> str:
    lines = "\n".join(f"• {escape(finding)}" for finding in findings)
    return f":mag: jitbot found NSG rules that drifted from what it owns, and acted:\n{lines}"
