"""Every text and Block Kit payload users see, built in one place.

Anything that came from a user (a reason, a VM name, a source typed in chat, an error
that quotes them) passes through :func:`escape` so that ``<!channel>``, ``<@U123>`` or a
link in it is shown as text and pings or links nobody.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from jitcore.durations import format_duration
from jitcore.model import AccessRequest, Grant, RequestStatus
from jitcore.notify import RestoreReport

APPROVE_ACTION = "jit_approve"
DENY_ACTION = "jit_deny"
EXTEND_ACTION = "jit_extend"
END_NOW_ACTION = "jit_end_now"
DENY_REASON_CALLBACK = "jit_deny_reason"
REASON_BLOCK = "reason_block"
REASON_INPUT = "reason_input"
MAX_DENY_REASON = 500

HELP_TEXT = "\n".join(
    [
        "*/jit* asks for just-in-time network access to an Azure VM.",
        "• `/jit request <vm> <ports> <duration> [from <ip|cidr>] [because <reason>]`"
        " — e.g. `/jit request vm-web01 22 2h from 203.0.113.7 because deploy fix`",
        "• `/jit request` alone — a form to pick VMs, ports, duration and source;"
        " several VMs inline: `/jit request vm-a,vm-b 22 1h from 203.0.113.7`",
        "• `/jit source set <ip|cidr>` / `/jit source` / `/jit source clear` — the source"
        " used when a request has no `from`",
        "• `/jit list` — your pending and active requests",
        "• `/jit status <vm>` — who has what open on that VM now, and for how long",
        "• `/jit extend <id> <duration>` — keep access open until now + duration, within the"
        " policy's maximum from when it opened (requester or approver)",
        "• `/jit revoke <id>` — end access now (requester or approver)",
        "• `/jit why <vm> [port]` — who you are in Azure, what your roles allow at that VM,"
        " which policy covers it and who approves",
        "• `/jit admin map <@user> <upn or object id>` / `/jit admin unmap <@user>`"
        " — tie a Slack user to an Entra ID user (admins)",
        "• `/jit policy protect <vm>` / `/jit policy unprotect <vm>` — put or remove"
        " jitbot's JIT deny rules (admins)",
        "• `/jit scan` — which VMs are exposed, protected, closed or not applicable (admins)",
        "• `/jit audit [<vm> | <@user>] [<since>]` — recent audit events, e.g."
        " `/jit audit vm-web01 7d` (approvers of the VM's policy, admins)",
        "• `/jit help` — this text",
        "Durations look like `90m`, `2h`, `1h30m`; ports like `22` or `22,3389`.",
    ]
)


_INVISIBLE = dict.fromkeys(
    [
        *range(0x09),
        0x0B,
        0x0C,
        *range(0x0E, 0x20),
        0x7F,
        0x200E,
        0x200F,
        *range(0x202A, 0x202F),
        *range(0x2066, 0x206A),
    ],
    "\ufffd",
)
"""Control and bidirectional-override characters, which could make text read differently
from what it says (``U+202E`` turns the rest of a line around)."""


def escape(text: str) -> str:
    """Make untrusted text safe to show in Slack mrkdwn.

    ``&``, ``<`` and ``>`` are escaped, so ``<!channel>``, ``<@U123>`` and links show as
    text; control and direction-override characters are replaced with U+FFFD.
    """
    text = text.translate(_INVISIBLE)
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
        blocks.append(_decision_buttons(request))
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
            return ":lock: Access expired; jitbot's rules are removed (details in the thread)"
        case RequestStatus.REVOKED:
            return ":lock: Access ended early; jitbot's rules are removed (details in the thread)"
        case RequestStatus.EXPIRED:
            return ":zzz: Nobody decided in time; the request expired"
        case RequestStatus.FAILED:
            return f":warning: Failed: {escape(request.failure_reason or 'unknown reason')}"
    return escape(request.status)


_AFTER_APPROVAL = {"approved", "opening", "active", "closing", "closed", "revoked", "failed"}


def already_decided(request_id: int, status: str, decided_by: str | None) -> str:
    """The answer to a late click: who decided first, and what became of the request."""
    by = f" by {mention(decided_by)}" if decided_by else ""
    if status == "denied":
        return f"Request #{request_id} was already denied{by}; nothing changed."
    if status in _AFTER_APPROVAL:
        now = "" if status == "approved" else f" (now {escape(status)})"
        return f"Request #{request_id} was already approved{by}{now}; nothing changed."
    return f"Request #{request_id} is {escape(status)}; nothing changed."


def granted_text(request: AccessRequest, grants: list[Grant]) -> str:
    assert request.ends_at is not None
    if any(g.kind == "defender" for g in grants):
        return defender_granted_text(request, grants)
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
            f"changes made by others, left untouched: {changes}."
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
        elif request.status == RequestStatus.CLOSING and request.ends_at and request.ends_at > now:
            line += f", open until {when(request.ends_at)} at the latest"
        lines.append(line)
    return "\n".join(lines)


MAX_STATUS_LINES = 50


def status_text(vm_name: str, requests: list[AccessRequest], now: datetime) -> str:
    """``/jit status``: each request open on the VM, its ports, source and time left."""
    vm = escape(vm_name)
    if not requests:
        return f"Nothing is open on *{vm}* through jitbot right now."
    lines = [f"*{vm}*: {_count(len(requests), 'request')} open now"]
    for request in requests[:MAX_STATUS_LINES]:
        line = (
            f"• #{request.id} {mention(request.requester_id)}: port {request.ports}/"
            f"{request.protocol} from `{escape(request.source_prefix)}`, {request.status}"
        )
        lines.append(line + _time_left(request, now))
    if len(requests) > MAX_STATUS_LINES:
        lines.append(f"…and {len(requests) - MAX_STATUS_LINES} more not shown.")
    return "\n".join(lines)


def extended_text(request: AccessRequest, by: str) -> str:
    """The news of an extension, for the requester and the approval thread."""
    assert request.ends_at is not None
    return (
        f":hourglass_flowing_sand: Access for request #{request.id} (port {request.ports} on "
        f"*{escape(request.vm_name)}*) was extended by {mention(by)}; it is now open until "
        f"{when(request.ends_at)}."
    )


def extended_ack(request: AccessRequest) -> str:
    assert request.ends_at is not None
    return f"Request #{request.id} is now open until {when(request.ends_at)}."


def extension_too_long(request_id: int, limit: datetime, longest: timedelta) -> str:
    """The refusal of an extension past the policy's maximum from when access opened."""
    room = (
        f"the longest extension now is {format_duration(longest)}"
        if longest > timedelta(0)
        else "it cannot be extended any further"
    )
    return (
        f":no_entry: Request #{request_id} may stay open until {when(limit)} at most: that is "
        f"the policy's maximum counted from when access opened, so {room}. For longer, make "
        "a new request; extending past the maximum with a new approval is not supported."
    )


def expiring_text(request: AccessRequest, now: datetime) -> str:
    assert request.ends_at is not None
    minutes = max(1, round((request.ends_at - now).total_seconds() / 60))
    return (
        f":alarm_clock: Access for request #{request.id} (port {request.ports} on "
        f"*{escape(request.vm_name)}* from `{escape(request.source_prefix)}`) expires in "
        f"{minutes} min, at {when(request.ends_at, now)}."
    )


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def extend_button_value(request: AccessRequest) -> str:
    """``<request id>:<end warned about, in microseconds since the epoch>``: a click
    extends from that end, so a second click on the same warning finds the work done
    instead of adding again."""
    assert request.ends_at is not None
    return f"{request.id}:{(request.ends_at - EPOCH) // timedelta(microseconds=1)}"


def expiring_blocks(
    request: AccessRequest, extend_by: timedelta, now: datetime, defender: bool = False
) -> list[dict[str, Any]]:
    """The expiring-soon DM: when access ends, and an Extend button while the policy's
    maximum leaves room (never in Defender mode, where a request's end cannot move)."""
    blocks: list[dict[str, Any]] = [
        {
            "type": "section",
            "block_id": f"jit-expiring-{request.id}",
            "text": {"type": "mrkdwn", "text": expiring_text(request, now)},
        }
    ]
    if extend_by >= timedelta(minutes=1) and not defender:
        blocks.append(
            {
                "type": "actions",
                "block_id": f"jit-expiring-{request.id}-actions",
                "elements": [
                    {
                        "type": "button",
                        "action_id": EXTEND_ACTION,
                        "text": {
                            "type": "plain_text",
                            "text": f"Extend by {format_duration(extend_by)}",
                        },
                        "style": "primary",
                        "value": extend_button_value(request),
                    }
                ],
            }
        )
    elif defender:
        blocks.append(
            _context(
                "Defender for Cloud cannot move the end of a JIT request; for longer, make "
                "a new request."
            )
        )
    else:
        blocks.append(
            _context(
                "That is the policy's maximum from when access opened; for longer, make a "
                "new request."
            )
        )
    return blocks


def extended_blocks(request: AccessRequest) -> list[dict[str, Any]]:
    """What an expiring-soon DM becomes once its Extend button worked."""
    return [_mrkdwn_section(f":white_check_mark: {extended_ack(request)}")]


def _time_left(request: AccessRequest, now: datetime) -> str:
    if request.status != RequestStatus.ACTIVE or request.ends_at is None:
        return ""
    left = format_duration(request.ends_at - now)
    return f", {left} left (until {when(request.ends_at, now)})"


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


# -- identity and Azure RBAC -----------------------------------------------------------

FOLLOW_UP_MARK = ":hourglass_flowing_sand:"
"""Starts an ack whose real answer follows through the command's response_url."""

_OPERATION_VERBS = {
    "request": "request access to {vm}",
    "extend": "extend access to {vm}",
    "approve": "approve requests for {vm}",
    "read": "see JIT requests for {vm}",
    "configure": "administer jitbot in this subscription",
}

_IDENTITY_REASONS = {
    "unknown_user": "Slack does not know the user {who}.",
    "deactivated": "The Slack account of {who} is deactivated.",
    "bot": "{who} is a bot or an app; only people can use jitbot.",
    "guest": "{who} is a guest of this workspace; jitbot is for full members only.",
    "external": "{who} belongs to another organisation; jitbot is for this workspace only.",
    "no_email": "jitbot cannot see an email address on the Slack profile of {who}.",
    "unconfirmed_email": "The email address {target} of {who} is not confirmed in Slack.",
    "no_principal": "No Entra ID user has {target} as its mail or user principal name.",
    "ambiguous": "Several Entra ID users answer to {target}; jitbot does not guess.",
    "disabled": "The Entra ID account {target} is disabled.",
}
_MAPPING_FIXABLE = frozenset({"no_email", "unconfirmed_email", "no_principal", "ambiguous"})


def checking_access(what: str) -> str:
    return f"{FOLLOW_UP_MARK} Checking your Azure access {escape(what)}…"


def identity_refused(
    user_id: str, reason: str, target: str, source: str, *, hint: bool = True
) -> str:
    """Why ``user_id`` cannot be tied to an Entra ID user, and (with ``hint``, for the
    user themself) how to get it fixed."""
    who = mention(user_id)
    shown = f"`{escape(target)}`" if target else "the address"
    text = ":no_entry: " + _IDENTITY_REASONS[reason].format(who=who, target=shown)
    if source in ("admin", "policy") and reason == "no_principal":
        where = "a jitbot admin's mapping" if source == "admin" else "the policy file's mapping"
        text += f" It comes from {where}, which needs fixing."
    if hint and reason in _MAPPING_FIXABLE:
        text += (
            " jitbot needs to know who you are in Entra ID: ask a jitbot admin to run "
            f"`/jit admin map {who} <your user principal name or object id>`."
        )
    return text


def requester_unmapped(requester_id: str, reason: str, target: str, source: str) -> str:
    why = identity_refused(requester_id, reason, target, source, hint=False)
    return (
        f"{why.removeprefix(':no_entry: ')}\n:no_entry: So jitbot cannot check the requester's "
        "Azure roles, and the request cannot be approved; it stays pending (deny it, or have "
        "them mapped first)."
    )


def requester_lost_access(requester_id: str, vm: str, decision: Any) -> str:
    missing = ", ".join(f"`{escape(a)}`" for a in decision.missing)
    return (
        f":no_entry: {mention(requester_id)} no longer holds what requesting access to "
        f"*{escape(vm)}* needs at `{escape(decision.scope)}`: {missing}. The request cannot "
        "be approved; it stays pending (deny it, or approve once their role is back)."
    )


def gate_failed() -> str:
    return (
        ":warning: jitbot failed while checking your access and did nothing; the error is in "
        "its log. Try again, or tell its operators."
    )


def identity_unavailable() -> str:
    return (
        ":warning: jitbot could not reach Slack or Entra ID to check who you are, so it did "
        "nothing. Try again in a minute."
    )


def access_check_failed(reason: str) -> str:
    return (
        f":warning: jitbot could not read your Azure permissions, so it did nothing: "
        f"{escape(reason)}"
    )


def access_refused(operation: str, vm: str | None, upn: str, decision: Any) -> str:
    """The refusal of an Azure RBAC check: the missing actions, the scope, what counted."""
    doing = _OPERATION_VERBS[operation].format(vm=f"*{escape(vm or '')}*")
    denied: dict[str, list[str]] = {}
    for action, deny_id in decision.denied:
        denied.setdefault(action, []).append(deny_id.rstrip("/").rsplit("/", 1)[-1])
    lines = [
        f":no_entry: You cannot {doing}: your Azure identity `{escape(upn)}` lacks "
        f"{_count(len(decision.missing), 'action')} at `{escape(decision.scope)}`:"
    ]
    for action in decision.missing:
        line = f"• `{escape(action)}`"
        if action in denied:
            line += " — blocked by deny assignment " + ", ".join(
                f"`{escape(d)}`" for d in denied[action]
            )
        lines.append(line)
    lines.append(_roles_line(decision))
    advice = (
        "Ask your Azure administrator for a role that grants them "
        "(docs/permissions.md lists the roles)"
    )
    if vm:
        advice += f"; `/jit why {escape(vm)}` shows the details"
    lines.append(advice + ".")
    return "\n".join(lines)


def _roles_line(decision: Any) -> str:
    roles: list[str] = []
    for sources in decision.granted_by.values():
        for role, scope in sources:
            text = f"{escape(role)} at `{escape(scope)}`"
            if text not in roles:
                roles.append(text)
    if not roles:
        return "No role assignment of yours grants any of the needed actions there."
    return "Roles that count there: " + "; ".join(roles) + "."


def why_text(
    principal: Any,
    vm: str,
    decision: Any | None,
    policy: Any | None,
    port: int | None,
    requester_id: str,
) -> str:
    """``/jit why``: who you are, what your roles allow at the VM, the policy, the approvers."""
    lines = [
        f"*Why, for {escape(vm)}*",
        f"• You are `{escape(principal.upn)}` (object id `{escape(principal.object_id)}`), "
        f"from {_source_text(principal.source)}.",
    ]
    if decision is not None:
        lines += _decision_lines(decision)
    lines += _policy_lines(policy, vm, port, requester_id)
    return "\n".join(lines)


def _source_text(source: str) -> str:
    return {
        "admin": "a jitbot admin's mapping",
        "policy": "the policy file's `principals` map",
        "email": "your Slack email address",
    }.get(source, escape(source))


def _decision_lines(decision: Any) -> list[str]:
    verdict = "can" if decision.allowed else "cannot"
    lines = [f"• Your Azure roles {verdict} request JIT access at `{escape(decision.scope)}`."]
    if decision.held:
        lines.append("• Held: " + ", ".join(f"`{escape(a)}`" for a in decision.held))
    if decision.missing:
        denied = {action for action, _ in decision.denied}
        missing = [
            f"`{escape(a)}`" + (" (blocked by a deny assignment)" if a in denied else "")
            for a in decision.missing
        ]
        lines.append("• Missing: " + ", ".join(missing))
    lines.append("• " + _roles_line(decision))
    return lines


def _policy_lines(policy: Any | None, vm: str, port: int | None, requester_id: str) -> list[str]:
    if policy is None:
        return [f"• No JIT policy covers {escape(vm)}, so it cannot be requested."]
    ports = ", ".join(
        f"{r.port}/{r.protocol} up to {format_duration(r.max_duration)}" for r in policy.ports
    )
    lines = [f"• Policy `{escape(policy.name)}` covers it: {ports}."]
    lines += defender_policy_lines(policy)
    if port is not None:
        allowed = policy.port_rule(port) is not None
        lines.append(f"• Port {port} is {'' if allowed else 'not '}in that policy.")
    approvers = [approver_mention(a) for a in policy.approvers if a != requester_id]
    if approvers:
        lines.append(
            "• Approvers: " + ", ".join(approvers) + " (each must also hold the request actions "
            "at the VM in Azure when they approve)."
        )
    else:
        lines.append("• Nobody but you is an approver, and nobody approves their own request.")
    return lines + approval_rule_lines(policy)


def mapped_text(user_id: str, upn: str, object_id: str) -> str:
    return (
        f":white_check_mark: {mention(user_id)} is now `{escape(upn)}` "
        f"(object id `{escape(object_id)}`) for jitbot."
    )


def unmapped_text(user_id: str, removed: bool) -> str:
    if not removed:
        return f"{mention(user_id)} had no admin mapping; nothing changed."
    return (
        f":white_check_mark: The admin mapping of {mention(user_id)} is removed; jitbot will "
        "use the policy file or their Slack email next time."
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


# -- protection and scan (admins) -------------------------------------------------------

MAX_BLOCKS = 50
MAX_SECTION_TEXT = 3000
SCAN_ORDER = ("exposed", "not applicable", "closed", "protected")
_SCAN_ICONS = {
    "exposed": ":rotating_light:",
    "not applicable": ":grey_question:",
    "closed": ":lock:",
    "protected": ":shield:",
}


def protected_text(vm_name: str, created: tuple[str, ...], already: tuple[str, ...]) -> str:
    lines = [f":shield: *{escape(vm_name)}* is protected by JIT deny rules."]
    if created:
        lines.append("Deny rules created in: " + ", ".join(f"`{escape(c)}`" for c in created))
    if already:
        lines.append("Already protected in: " + ", ".join(f"`{escape(a)}`" for a in already))
    return "\n".join(lines)


def unprotected_text(vm: str, removed: list[str]) -> str:
    if not removed:
        return f"No jitbot deny rule was found for *{escape(vm)}*; nothing changed."
    nsgs = ", ".join(f"`{escape(n)}`" for n in removed)
    return (
        f":unlock: jitbot's JIT deny rules for *{escape(vm)}* are removed from {nsgs}. "
        "No other rule was touched; its management ports are as open as those rules allow."
    )


def scan_started() -> str:
    return (
        ":mag: Scanning the subscription's VMs; the results are in your direct messages with "
        "jitbot, updated as the scan goes."
    )


def scan_progress_text(done: int, total: int) -> str:
    if total == 0:
        return ":mag: Scanning the subscription's VMs for JIT exposure…"
    return f":mag: Scanning the subscription's VMs for JIT exposure… {done}/{total} VMs checked."


def scan_failed_text(reason: str) -> str:
    return f":warning: The scan could not finish: {escape(reason)}"


def scan_summary(results: list[Any]) -> str:
    counts = {status: 0 for status in SCAN_ORDER}
    for result in results:
        counts[result.status] = counts.get(result.status, 0) + 1
    parts = ", ".join(f"{n} {status}" for status, n in counts.items())
    return f"JIT exposure scan of {_count(len(results), 'VM')}: {parts}"


def scan_blocks(results: list[Any]) -> list[dict[str, Any]]:
    """The scan's outcome, grouped by classification, exposed first.

    Lines are packed into sections of at most 3,000 characters and at most 50 blocks;
    what does not fit is counted in a last line instead of being cut silently.
    """
    blocks: list[dict[str, Any]] = [_mrkdwn_section(f"*{scan_summary(results)}*")]
    room = MAX_BLOCKS - 2
    left_out = 0
    for status in SCAN_ORDER:
        group = [r for r in results if r.status == status]
        if not group:
            continue
        title = f"{_SCAN_ICONS[status]} *{status.capitalize()}* ({len(group)})"
        lines = [_scan_line(r) for r in group]
        sections, rest = _pack(title, lines, room)
        blocks.extend(_mrkdwn_section(text) for text in sections)
        room -= len(sections)
        left_out += rest
    if left_out:
        blocks.append(
            _context(
                f"{_count(left_out, 'more VM')} not shown here (Slack's message limits); "
                "`jitbot scan` on the command line lists them all."
            )
        )
    return blocks


def _scan_line(result: Any) -> str:
    return f"• `{escape(_clip(result.vm_name, 80))}` — {escape(_clip(result.reason, 300))}"


def _pack(title: str, lines: list[str], room: int) -> tuple[list[str], int]:
    """Sections of at most MAX_SECTION_TEXT characters, at most ``room`` of them; and how
    many lines did not fit."""
    if room <= 0:
        return [], len(lines)
    sections: list[str] = []
    current = title
    for index, line in enumerate(lines):
        if len(current) + 1 + len(line) <= MAX_SECTION_TEXT:
            current += "\n" + line
            continue
        sections.append(current)
        if len(sections) >= room:
            return sections, len(lines) - index
        current = line
    sections.append(current)
    return sections, 0


def _mrkdwn_section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def _context(text: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": text}]}


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- App Home ------------------------------------------------------------------------------

HOME_MINE_LIMIT = 20
"""At most this many of the user's own requests on the home tab (one block each)."""


def home_view(
    mine: list[AccessRequest], waiting: list[AccessRequest] | None, now: datetime
) -> dict[str, Any]:
    """The App Home tab: the user's open requests (End now on active ones) and, for
    approvers (``waiting`` not None), the requests waiting for them with Approve and Deny.

    At most 50 blocks; what does not fit is counted, pointing at ``/jit list``.
    """
    blocks: list[dict[str, Any]] = [_mrkdwn_section("*Your requests*")]
    shown = mine[:HOME_MINE_LIMIT]
    if not mine:
        blocks.append(_context("You have no pending or active requests."))
    blocks.extend(_home_mine(request, now) for request in shown)
    if len(mine) > len(shown):
        blocks.append(_context(f"…and {len(mine) - len(shown)} more; `/jit list` shows all."))
    if waiting is not None:
        blocks += [{"type": "divider"}, _mrkdwn_section("*Waiting for your approval*")]
        room = (MAX_BLOCKS - len(blocks) - 1) // 2
        if not waiting:
            blocks.append(_context("Nothing is waiting for your approval."))
        for request in waiting[:room]:
            blocks += [_home_waiting(request), _decision_buttons(request)]
        if len(waiting) > room:
            blocks.append(_context(f"…and {len(waiting) - room} more in the approval channel."))
    return {"type": "home", "blocks": blocks}


def home_refused_view(text: str) -> dict[str, Any]:
    return {"type": "home", "blocks": [_mrkdwn_section(_clip(text, MAX_SECTION_TEXT))]}


def _home_mine(request: AccessRequest, now: datetime) -> dict[str, Any]:
    line = (
        f"#{request.id} *{escape(request.vm_name)}* port {request.ports}/{request.protocol} "
        f"from `{escape(request.source_prefix)}`: {request.status}"
    )
    block = _mrkdwn_section(line + _time_left(request, now))
    block["block_id"] = f"jit-home-mine-{request.id}"
    if request.status == RequestStatus.ACTIVE:
        block["accessory"] = {
            "type": "button",
            "action_id": END_NOW_ACTION,
            "text": {"type": "plain_text", "text": "End now"},
            "style": "danger",
            "value": str(request.id),
        }
    return block


def _home_waiting(request: AccessRequest) -> dict[str, Any]:
    duration = format_duration(timedelta(seconds=request.duration_seconds))
    reason = escape(_clip(request.reason, 300)) if request.reason else "_no reason given_"
    text = (
        f"#{request.id} {mention(request.requester_id)} asks for port {request.ports}/"
        f"{request.protocol} on *{escape(request.vm_name)}* from "
        f"`{escape(request.source_prefix)}` for {duration}: {reason}"
    )
    block = _mrkdwn_section(text)
    block["block_id"] = f"jit-home-waiting-{request.id}"
    return block


def _decision_buttons(request: AccessRequest) -> dict[str, Any]:
    return {
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


# -- Deny with a reason -----------------------------------------------------------------------


def deny_reason_view(request: AccessRequest, metadata: str) -> dict[str, Any]:
    """The modal a Deny click opens: an optional reason, shown to the requester."""
    return {
        "type": "modal",
        "callback_id": DENY_REASON_CALLBACK,
        "private_metadata": metadata,
        "title": {"type": "plain_text", "text": "Deny request"},
        "submit": {"type": "plain_text", "text": "Deny"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            _mrkdwn_section(
                f"Deny request #{request.id} of {mention(request.requester_id)} for port "
                f"{request.ports}/{request.protocol} on *{escape(request.vm_name)}*? "
                "Nothing will be opened."
            ),
            {
                "type": "input",
                "block_id": REASON_BLOCK,
                "optional": True,
                "label": {"type": "plain_text", "text": "Reason (optional)"},
                "hint": {
                    "type": "plain_text",
                    "text": "Shown to the requester and on the approval message.",
                },
                "element": {
                    "type": "plain_text_input",
                    "action_id": REASON_INPUT,
                    "multiline": True,
                    "max_length": MAX_DENY_REASON,
                },
            },
        ],
    }


def denied_without_reason(request_id: int) -> str:
    return (
        f"Request #{request_id} is denied, without a reason: Slack's form for one expired "
        "before it could open."
    )


def deny_form_failed(request_id: int) -> str:
    return (
        f":warning: jitbot could not open the form to deny request #{request_id}; nothing "
        "changed. Click Deny again."
    )


# -- Defender for Cloud enforcement ----------------------------------------------------

_DEFENDER_CLOSE_WORDS = {
    "expired": "Defender for Cloud closed it at its end time",
    "revoked": "it was ended in Defender for Cloud",
    "superseded": (
        "Defender for Cloud replaced it with a newer JIT request for the same VM, so access "
        "now follows that newer request, not this one"
    ),
}


def defender_granted_text(request: AccessRequest, grants: list[Grant]) -> str:
    """Granted, in Defender mode: said only once Defender reports every port Initiated."""
    assert request.ends_at is not None
    policies = ", ".join(
        f"`{escape(g.rule_name)}`" for g in grants if g.kind == "defender" and g.state == "present"
    )
    return (
        f":unlock: Access granted for request #{request.id}: Defender for Cloud reports "
        f"port {request.ports}/{request.protocol} on *{escape(request.vm_name)}* open from "
        f"`{escape(request.source_prefix)}` until {when(request.ends_at)}.\n"
        f"Defender JIT policy: {policies or 'none'}. Defender closes the port at that time; "
        "it cannot be extended (make a new request instead)."
    )


def defender_closed_text(request: AccessRequest, args: dict[str, Any]) -> str:
    """Closed, in Defender mode: Defender reported every port Revoked."""
    reason = str(args.get("reason") or "")
    why = _DEFENDER_CLOSE_WORDS.get(reason, f"Defender for Cloud reports it revoked ({reason})")
    if request.end_reason == "revoked" and reason == "expired":
        why = "it was ended in jitbot, and Defender for Cloud closed it at its end time"
    return (
        f":lock: Access for request #{request.id} (port {request.ports} on "
        f"*{escape(request.vm_name)}*) is closed: {escape(why)}. Defender for Cloud reports "
        "the port Revoked. Sessions already established are not cut by Azure."
    )


def defender_end_pending_text(request: AccessRequest, args: dict[str, Any]) -> str:
    """An early end asked in Defender mode, which Defender cannot do before endTimeUtc."""
    ends = request.ends_at
    until = when(ends) if ends is not None else "its end time"
    return (
        f":hourglass: {mention(str(args.get('by', '')))} ended request #{request.id} in "
        "jitbot, but Defender for Cloud has no way to close a JIT request early: port "
        f"{request.ports} on *{escape(request.vm_name)}* stays open from "
        f"`{escape(request.source_prefix)}` until {until}. jitbot will say when Defender "
        "reports it closed."
    )


def defender_revoke_ack(request_id: int) -> str:
    return (
        f"Ending request #{request_id}. It is open through Defender for Cloud, which closes "
        "the port only at its end time; you will be told when Defender reports it closed."
    )


def defender_policy_lines(policy: Any) -> list[str]:
    """``/jit why``: what Defender mode means for this policy."""
    if getattr(policy, "enforcement", "nsg") != "defender":
        return []
    return [
        "• Enforcement: Defender for Cloud JIT (needs Defender for Servers Plan 2); jitbot "
        "checks and approves, Defender opens and closes the port."
    ]


def policy_refused_line(policy_name: str, reason: str) -> str:
    """``/jit why`` for a VM whose policy was refused at load."""
    return (
        f"• :no_entry: Policy `{escape(policy_name)}` was refused when jitbot started, so "
        f"nothing can be requested under it: {escape(reason)}."
    )


# ---- /jit audit --------------------------------------------------------------------------

AUDIT_MAX_EVENTS = 30
AUDIT_MAX_CHARS = 3500
"""What one ``/jit audit`` answer shows at most; Slack accepts far longer messages, but
beyond this a reader is better served by ``jitbot audit export``."""
_AUDIT_DETAIL_KEYS = 4
_AUDIT_VALUE_CHARS = 60


def audit_text(entries: list[Any], scope: str, since: datetime, limited: bool = False) -> str:
    """The answer to ``/jit audit``: newest first, every value escaped, at most
    ``AUDIT_MAX_EVENTS`` lines and ``AUDIT_MAX_CHARS`` characters, then how many more.

    ``scope`` is already escaped chat text (the VM or user asked about, or "everything").
    """
    since_text = since.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    head = f"*Audit log* for {scope} since {since_text}"
    if limited:
        head += " (only the VMs whose policies you approve)"
    if not entries:
        return f"{head}: no events."
    lines = [f"{head}: {_count(len(entries), 'event')}, newest first"]
    length = len(lines[0])
    shown = 0
    for entry in entries[:AUDIT_MAX_EVENTS]:
        line = _audit_line(entry)
        if length + len(line) + 1 > AUDIT_MAX_CHARS:
            break
        lines.append(line)
        length += len(line) + 1
        shown += 1
    if shown < len(entries):
        lines.append(
            f"_{len(entries) - shown} more; use `jitbot audit export --since "
            f"{since.astimezone(UTC).strftime('%Y-%m-%d')}` for all of them._"
        )
    return "\n".join(lines)


def _audit_line(entry: Any) -> str:
    event = entry.event
    when = event.at.astimezone(UTC).strftime("%Y-%m-%d %H:%M") if event.at else "?"
    line = f"• `{when}` *{_audit_value(event.action)}* by {_audit_actor(event.actor)}"
    if event.request_id is not None:
        line += f" · request #{event.request_id}"
    if entry.vm_name:
        line += f" on *{_audit_value(entry.vm_name)}*"
    detail = event.detail if isinstance(event.detail, dict) else {}
    shown = [k for k in sorted(detail) if k not in ("vm", "vm_name")][:_AUDIT_DETAIL_KEYS]
    if shown:
        line += " · " + ", ".join(
            f"{_audit_value(str(k))}: {_audit_value(detail[k])}" for k in shown
        )
    return line


def _audit_actor(actor: str) -> str:
    """A Slack member as a mention; the bot itself, ``cli`` and the like as plain text."""
    if re.fullmatch(r"[UW][A-Z0-9]{2,}", actor):
        return mention(actor)
    return _audit_value(actor)


def _audit_value(value: Any) -> str:
    """One value on one line, clipped and escaped (markup and mentions show as text); an
    Azure resource id is shown by its name."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    if text.startswith("/subscriptions/"):
        text = text.rstrip("/").rsplit("/", 1)[-1]
    text = " ".join(text.split())
    if len(text) > _AUDIT_VALUE_CHARS:
        text = text[: _AUDIT_VALUE_CHARS - 1] + "…"
    return escape(text)


def audit_refused(vm: str | None, policy_name: str | None) -> str:
    if vm is not None:
        return (
            f":no_entry: You cannot read the audit log of *{escape(vm)}*: only the approvers "
            f"of policy *{escape(policy_name or '')}* and jitbot admins (the configure "
            "actions at the subscription) can."
        )
    return (
        ":no_entry: You cannot read the audit log: jitbot admins (the configure actions at "
        "the subscription) read all of it, and approvers what concerns the VMs of their "
        "policies; you are neither. `/jit audit <vm>` names one VM."
    )


# -- Request form, several VMs, saved and one-time sources -----------------------------

REQUEST_FORM_CALLBACK = "jit_request_form"
FORM_VMS_BLOCK = "form_vms"
FORM_VMS_INPUT = "vms"
FORM_PORTS_BLOCK = "form_ports"
FORM_PORTS_INPUT = "ports"
FORM_DURATION_BLOCK = "form_duration"
FORM_DURATION_INPUT = "duration"
FORM_SOURCE_BLOCK = "form_source"
FORM_SOURCE_INPUT = "source"
FORM_REASON_BLOCK = "form_reason"
FORM_REASON_INPUT = "reason"
MY_IP_ACTION = "jit_my_ip"
MAX_FORM_OPTIONS = 100
"""Slack's limit on the options of one select menu."""
FORM_DEFAULT_DURATION = "1h"


def _plain_text(text: str) -> dict[str, Any]:
    return {"type": "plain_text", "text": text}


def _option(text: str, value: str) -> dict[str, Any]:
    return {"text": _plain_text(_clip(text, 75)), "value": value}


def request_form_loading_view() -> dict[str, Any]:
    """Shown at once, while the VMs the user may request are looked up in Azure."""
    return {
        "type": "modal",
        "callback_id": REQUEST_FORM_CALLBACK,
        "title": _plain_text("Request JIT access"),
        "close": _plain_text("Cancel"),
        "blocks": [_mrkdwn_section(":hourglass_flowing_sand: Checking which VMs you may request…")],
    }


def request_form_message_view(text: str) -> dict[str, Any]:
    """The form replaced by a message (no VM to offer, or the checks failed)."""
    return {
        "type": "modal",
        "callback_id": REQUEST_FORM_CALLBACK,
        "title": _plain_text("Request JIT access"),
        "close": _plain_text("Close"),
        "blocks": [_mrkdwn_section(_clip(text, MAX_SECTION_TEXT))],
    }


def request_form_view(
    vms: list[str], ports: list[tuple[int, str]], saved_source: str | None
) -> dict[str, Any]:
    """The request form: the VMs the user may request, the ports their policies allow
    (``(port, protocol)``), duration, source (the saved default prefilled) and reason."""
    source_element: dict[str, Any] = {
        "type": "plain_text_input",
        "action_id": FORM_SOURCE_INPUT,
        "max_length": 100,
        "placeholder": _plain_text("203.0.113.7 or 203.0.113.0/28"),
    }
    if saved_source:
        source_element["initial_value"] = saved_source
    notes = []
    if len(vms) > MAX_FORM_OPTIONS:
        notes.append(
            _context(
                f"You may request {len(vms)} VMs; the list shows the first "
                f"{MAX_FORM_OPTIONS}. Request the others inline: `/jit request <vm> …`."
            )
        )
    return {
        "type": "modal",
        "callback_id": REQUEST_FORM_CALLBACK,
        "title": _plain_text("Request JIT access"),
        "submit": _plain_text("Request"),
        "close": _plain_text("Cancel"),
        "blocks": notes
        + [
            {
                "type": "input",
                "block_id": FORM_VMS_BLOCK,
                "label": _plain_text("VMs"),
                "element": {
                    "type": "multi_static_select",
                    "action_id": FORM_VMS_INPUT,
                    "placeholder": _plain_text("Choose one or more VMs"),
                    "options": [_option(vm, vm) for vm in vms[:MAX_FORM_OPTIONS]],
                },
            },
            {
                "type": "input",
                "block_id": FORM_PORTS_BLOCK,
                "label": _plain_text("Ports"),
                "element": {
                    "type": "multi_static_select",
                    "action_id": FORM_PORTS_INPUT,
                    "placeholder": _plain_text("Choose one or more ports"),
                    "options": [
                        _option(f"{port}/{protocol}", str(port))
                        for port, protocol in ports[:MAX_FORM_OPTIONS]
                    ],
                },
            },
            {
                "type": "input",
                "block_id": FORM_DURATION_BLOCK,
                "label": _plain_text("Duration"),
                "hint": _plain_text("Like 30m, 2h or 1h30m, within the policy's limits."),
                "element": {
                    "type": "plain_text_input",
                    "action_id": FORM_DURATION_INPUT,
                    "initial_value": FORM_DEFAULT_DURATION,
                    "max_length": 20,
                },
            },
            {
                "type": "input",
                "block_id": FORM_SOURCE_BLOCK,
                "optional": True,
                "label": _plain_text("Connect from (IP or CIDR)"),
                "hint": _plain_text(
                    "Leave empty to get a one-time link that records your current address."
                ),
                "element": source_element,
            },
            {
                "type": "input",
                "block_id": FORM_REASON_BLOCK,
                "optional": True,
                "label": _plain_text("Reason"),
                "element": {
                    "type": "plain_text_input",
                    "action_id": FORM_REASON_INPUT,
                    "multiline": True,
                    "max_length": 500,
                },
            },
        ],
    }


def opening_form() -> str:
    return (
        ":memo: Opening the request form… (or type it: "
        "`/jit request <vm> <ports> <duration> from <ip>`)"
    )


def no_requestable_vms() -> str:
    return (
        ":no_entry: There is no VM you may request: your Azure roles allow JIT requests on "
        "none of the VMs jitbot's policies cover. `/jit why <vm>` shows what is missing."
    )


def form_expired() -> str:
    return (
        ":warning: Slack's form timed out before jitbot could open it; nothing was "
        "requested. Run `/jit request` again, or type the request inline: "
        "`/jit request <vm> <ports> <duration> from <ip>`."
    )


def form_failed() -> str:
    return (
        ":warning: jitbot could not open the request form; nothing was requested. Type the "
        "request inline: `/jit request <vm> <ports> <duration> from <ip>`."
    )


def request_refused_per_vm(refusals: dict[str, str]) -> str:
    """Several VMs, some refused (texts already escaped): nothing was requested."""
    lines = [f"• *{escape(vm)}*: {text}" for vm, text in refusals.items()]
    return ":no_entry: Nothing was requested:\n" + "\n".join(lines)


def group_submitted_ack(requests: list[AccessRequest]) -> str:
    """The answer to a request for one or several VMs: one request (and approval) per VM;
    a request an auto-approval rule approved says so."""
    if len(requests) == 1:
        only = requests[0]
        if only.status == RequestStatus.APPROVED:
            return auto_approved_ack(only)
        return submitted_ack(only)
    first = requests[0]
    duration = format_duration(timedelta(seconds=first.duration_seconds))
    lines = [
        f"• #{r.id} *{escape(r.vm_name)}*, auto-approved, opening now"
        if r.status == RequestStatus.APPROVED
        else f"• #{r.id} *{escape(r.vm_name)}*, to the approvers in <#{r.approval_channel}>"
        for r in requests
    ]
    return (
        f"{len(requests)} requests for port {first.ports} ({duration}), one per VM; each "
        "is approved, extended and ended on its own:\n" + "\n".join(lines)
    )


def saved_source_text(source: str | None) -> str:
    if source is None:
        return (
            "You have no saved source. `/jit source set <ip|cidr>` saves one, used when a "
            "request says no `from`."
        )
    return (
        f"Your saved source is `{escape(source)}`; requests without `from` use it "
        "(each policy still checks it). `/jit source clear` forgets it."
    )


def source_saved(source: str) -> str:
    return (
        f":white_check_mark: Saved `{escape(source)}` as your source; requests without "
        "`from` use it, if their policy allows it."
    )


def source_cleared(had_one: bool) -> str:
    if had_one:
        return "Your saved source is forgotten; requests need `from` again."
    return "You had no saved source; nothing changed."


def my_ip_offer(vms: list[str], url: str, minutes: int) -> tuple[str, list[dict[str, Any]]]:
    """No source given and none saved: a one-time link that records the user's address."""
    shown = ", ".join(f"*{escape(vm)}*" for vm in vms)
    text = (
        f"Where will you connect to {shown} from? Open the link below from the machine you "
        f"will connect with (it works once, for {minutes} minutes), or run the request "
        "again with `from <ip|cidr>`. `/jit source set <ip>` saves an address for next time."
    )
    blocks = [
        _mrkdwn_section(text),
        {
            "type": "actions",
            "block_id": "jit-my-ip",
            "elements": [
                {
                    "type": "button",
                    "action_id": MY_IP_ACTION,
                    "text": _plain_text("Use my current IP"),
                    "url": url,
                    "style": "primary",
                }
            ],
        },
    ]
    return text, blocks


def source_flags_block(request: AccessRequest, flags: list[Any]) -> dict[str, Any]:
    """A warning under the approval message about where the source address is."""
    details = "; ".join(escape(flag.detail) for flag in flags)
    return {
        "type": "context",
        "block_id": f"jit-req-{request.id}-source-flags",
        "elements": [
            {
                "type": "mrkdwn",
                "text": _clip(
                    f":warning: Source `{escape(request.source_prefix)}` is {details}.", 2000
                ),
            }
        ],
    }


# -- Approval rules: two approvers, auto-approval, reminders, the audit channel -------------


def approver_mention(approver: str) -> str:
    """A policy's approver entry as a mention: a user (U…, W…) or a user group (S…)."""
    if approver.isalnum() and approver.startswith("S"):
        return f"<!subteam^{approver}>"
    return mention(approver)


def partly_approved_line(approved_by: list[str], required: int) -> str:
    names = ", ".join(mention(a) for a in approved_by) or "nobody yet"
    missing = required - len(approved_by)
    more = "one more" if missing == 1 else f"{missing} more"
    return (
        f":hourglass: {len(approved_by)} of {required} approvals: approved by {names}, "
        f"waiting for {more}"
    )


def partly_approved_blocks(
    request: AccessRequest, approved_by: list[str], required: int
) -> list[dict[str, Any]]:
    """The approval message once some, not all, approvals are in: who approved so far,
    and the buttons for the others."""
    blocks = approval_blocks(request)
    if request.status != RequestStatus.PENDING:
        return blocks
    progress = _context(partly_approved_line(approved_by, required))
    progress["block_id"] = f"jit-req-{request.id}-progress"
    return [*blocks[:-1], progress, blocks[-1]]


def already_counted(request_id: int) -> str:
    """The answer to an approver clicking Approve again while a second approver is awaited."""
    return (
        f"Your approval of request #{request_id} is already counted; it needs another "
        "approver. Nothing changed."
    )


def _rule_of(request: AccessRequest) -> str:
    return (request.decided_by or "").removeprefix("auto:")


def auto_approved_ack(request: AccessRequest) -> str:
    return (
        f"Request #{request.id} for port {request.ports} on *{escape(request.vm_name)}* "
        f"({format_duration(timedelta(seconds=request.duration_seconds))}) was approved by "
        f"the policy's rule `{escape(_rule_of(request))}`; access opens in a moment. The "
        f"approvers in <#{request.approval_channel}> can review it."
    )


def review_fallback(request: AccessRequest) -> str:
    return (
        f"JIT access request #{request.id} auto-approved by rule {escape(_rule_of(request))}: "
        f"port {request.ports} on {escape(request.vm_name)} from {escape(request.source_prefix)}"
    )


def review_blocks(request: AccessRequest) -> list[dict[str, Any]]:
    """The after-the-fact review post of an auto-approved request: which rule approved it,
    its status, and End now for approvers while access is open."""
    blocks: list[dict[str, Any]] = [
        {
            "type": "section",
            "block_id": f"jit-req-{request.id}-summary",
            "text": {
                "type": "mrkdwn",
                "text": (
                    f"*JIT access request* `#{request.id}` (policy "
                    f"`{escape(request.policy_name)}`) was *auto-approved* by rule "
                    f"`{escape(_rule_of(request))}`, for review"
                ),
            },
            "fields": _summary_fields(request),
        },
        {
            "type": "context",
            "block_id": f"jit-req-{request.id}-status",
            "elements": [{"type": "mrkdwn", "text": status_line(request)}],
        },
    ]
    if request.status in (RequestStatus.APPROVED, RequestStatus.OPENING, RequestStatus.ACTIVE):
        blocks.append(
            {
                "type": "actions",
                "block_id": f"jit-req-{request.id}-review",
                "elements": [
                    {
                        "type": "button",
                        "action_id": END_NOW_ACTION,
                        "text": {"type": "plain_text", "text": "End now"},
                        "style": "danger",
                        "value": str(request.id),
                    }
                ],
            }
        )
    return blocks


def reminder_text(request: AccessRequest, approvers: list[str], expires_at: datetime) -> str:
    """The one reminder in a pending request's thread, mentioning its approvers."""
    who = ", ".join(approver_mention(a) for a in approvers if a != request.requester_id)
    return (
        f":bell: {who}: request #{request.id} of {mention(request.requester_id)} for port "
        f"{request.ports} on *{escape(request.vm_name)}* is still waiting for a decision. "
        f"It expires {when(expires_at)} if nobody approves it."
    )


_AUDIT_WORDS = {
    "requested": "submitted",
    "approval_recorded": "approved",
    "approved": "approved",
    "auto_approved": "auto-approved",
    "denied": "denied",
    "opened": "opened",
    "extended": "extended",
    "expiry_warned": "expiring",
    "closed": "closed",
    "failed": "failed",
    "reminded": "reminded",
    "expired_unapproved": "expired pending",
}


def audit_line(request: AccessRequest, action: str, actor: str, detail: dict[str, Any]) -> str:
    """One line for the audit channel: the event, who, and what it concerns; every
    user-supplied part escaped, and nobody mentioned (no pings from the audit feed)."""
    word = _AUDIT_WORDS.get(action, action)
    if detail.get("approvals"):
        word += f" ({detail['approvals']})"
    if action == "closed" and detail.get("reason"):
        word += f" ({detail['reason']})"
    text = (
        f"#{request.id} {escape(word)} by {escape(actor)}: {escape(request.vm_name)} port "
        f"{request.ports}/{request.protocol} from {escape(request.source_prefix)} for "
        f"{escape(request.requester_id)}"
    )
    extra = _audit_extra(action, detail)
    return text + (f"; {extra}" if extra else "")


def _audit_extra(action: str, detail: dict[str, Any]) -> str:
    if action == "auto_approved":
        return f"rule {escape(str(detail.get('rule', '')))}"
    if action == "denied" and detail.get("note"):
        return f"reason: {escape(_clip(str(detail['note']), 200))}"
    if action == "failed" and detail.get("reason"):
        return f"reason: {escape(_clip(str(detail['reason']), 200))}"
    if action in ("opened", "extended") and detail.get("ends_at"):
        return f"until {escape(str(detail['ends_at']))}"
    return ""


def approval_rule_lines(policy: Any) -> list[str]:
    """For ``/jit why``: how many approvals a request needs, and which requests a rule
    approves without waiting."""
    lines = []
    if policy.approvals_required == 2:
        lines.append("• Two different approvers must approve, neither of them the requester.")
    for rule in policy.auto_approve:
        ports = ", ".join(str(p) for p in rule.ports) or "any"
        sources = ", ".join(f"`{escape(s)}`" for s in rule.sources) or "any allowed source"
        longest = f", up to {format_duration(rule.max_duration)}" if rule.max_duration else ""
        lines.append(
            f"• Rule `{escape(rule.name)}` approves at once: port {ports} from {sources}"
            f"{longest}, at most {rule.max_per_day} a day per requester."
        )
    return lines
