"""Asking for access: inline or through the form, for one VM or several, from an address
typed, saved, or recorded by a one-time link.

Whatever the way in, a request goes through the same steps:

1. the policy checks that need no network (VM known, ports, duration, and the source if
   one was typed), answered at once: in the slash command's ack, or as
   ``response_action: errors`` on the form;
2. on the bot's executor, the RBAC checks of ``bot.gate`` for each VM;
3. the source: the one typed, else the user's saved one, else a one-time link
   (``bot.myip``) that finishes the request when opened;
4. ``Engine.submit_group``: one request per VM, recorded together or not at all.

Several VMs are all-or-nothing: if any VM is refused, by the policy or by Azure RBAC,
nothing is recorded and the answer says what was wrong with each.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot import messages
from bot.commands import MAX_PORTS, MAX_REASON, MAX_VMS, RequestCommand, SourceCommand
from bot.gate import AccessGate, GateRefusal
from bot.myip import LINK_PATH, LinkOutcome, SourceLinks
from jitcore.durations import format_duration, parse_duration
from jitcore.engine import Engine
from jitcore.errors import (
    DurationOutOfBounds,
    InvalidSource,
    JitError,
    PortNotAllowed,
    RequestRejected,
)
from jitcore.model import AccessRequest, SavedSource, SourceLink, utcnow
from jitcore.policy import check_source, check_target, policy_vm_names
from jitcore.sources import canonical_source

log = logging.getLogger(__name__)

Reply = Callable[[str, list[dict[str, Any]] | None], None]


@dataclass(frozen=True)
class Draft:
    """What a user asked for, before the source is known for sure."""

    vms: tuple[str, ...]
    ports: tuple[int, ...]
    duration: timedelta
    source: str | None
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {
            "vms": list(self.vms),
            "ports": list(self.ports),
            "duration_seconds": int(self.duration.total_seconds()),
            "reason": self.reason,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str | None) -> Draft:
        return cls(
            tuple(str(vm) for vm in data["vms"]),
            tuple(int(p) for p in data["ports"]),
            timedelta(seconds=int(data["duration_seconds"])),
            source,
            str(data.get("reason", "")),
        )

    @classmethod
    def of(cls, command: RequestCommand) -> Draft:
        return cls(command.vms, command.ports, command.duration, command.source, command.reason)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a draft: the form block it belongs to, and the text."""

    block: str
    text: str


class RequestDesk:
    def __init__(
        self,
        engine: Engine,
        gate: AccessGate,
        client: WebClient,
        background: Executor,
        links: SourceLinks | None,
        public_url: str | None,
    ) -> None:
        self.engine = engine
        self.gate = gate
        self.client = client
        self.background = background
        self.links = links
        self.public_url = public_url

    # -- checks that need no network -----------------------------------------------------

    def problems(self, draft: Draft) -> list[Problem]:
        """What the policies refuse in ``draft``, per VM; empty if nothing."""
        found: list[Problem] = []
        policies = self.engine.policies.policies
        for vm in draft.vms:
            try:
                policy, vm_name, _protocol = check_target(
                    policies, vm, list(draft.ports), draft.duration
                )
                if draft.source is not None:
                    check_source(policy, draft.source, vm_name)
            except RequestRejected as exc:
                found.append(Problem(_block_of(exc), _per_vm(vm, exc, len(draft.vms))))
        return found

    def early_answer(self, draft: Draft) -> str | None:
        """The refusal to give in the slash command's ack, or None to go on."""
        found = self.problems(draft)
        if not found:
            return None
        self.engine.observer.request_event("rejected", None)
        if len(draft.vms) == 1:
            return messages.error_text(found[0].text)
        return messages.error_text("nothing was requested: " + "; ".join(p.text for p in found))

    # -- the rest, off the ack path ------------------------------------------------------

    def finish(self, draft: Draft, user_id: str, team_id: str, reply: Reply) -> None:
        """RBAC for each VM, then the source, then record the requests; answer by ``reply``."""
        refusals = self.gate.request_refusals(user_id, list(draft.vms))
        if refusals:
            if len(draft.vms) == 1:
                reply(next(iter(refusals.values())), None)
            else:
                reply(messages.request_refused_per_vm(refusals), None)
            return
        source = draft.source or self.saved_source(user_id)
        if source is None:
            self._offer_link(draft, user_id, team_id, reply)
            return
        reply(self.submit(draft, user_id, team_id, source), None)

    def submit(self, draft: Draft, user_id: str, team_id: str, source: str) -> str:
        """Record the requests (all or none) and start telling the approvers; the answer."""
        try:
            requests = self._record(draft, user_id, team_id, source)
        except JitError as exc:
            return messages.error_text(exc.message)
        return messages.group_submitted_ack(requests)

    def _record(self, draft: Draft, user_id: str, team_id: str, source: str) -> list[AccessRequest]:
        requests = self.engine.submit_group(
            team_id=team_id,
            requester_id=user_id,
            vms=list(draft.vms),
            ports=list(draft.ports),
            duration=draft.duration,
            source=source,
            reason=draft.reason,
        )
        for request in requests:
            self.background.submit(_logged, self.engine.settle_submitted, request.id)
        return requests

    def _offer_link(self, draft: Draft, user_id: str, team_id: str, reply: Reply) -> None:
        if self.links is None or self.public_url is None:
            reply(messages.missing_source(), None)
            return
        token = self.links.create(user_id, team_id, draft.to_json())
        self.engine.store.audit(
            "source_link_offered", user_id, None, vms=list(draft.vms), ports=list(draft.ports)
        )
        minutes = max(1, int(self.links.ttl.total_seconds() // 60))
        url = f"{self.public_url}{LINK_PATH}{token}"
        text, blocks = messages.my_ip_offer(_names(self.engine, draft.vms), url, minutes)
        reply(text, blocks)

    # -- the one-time link ---------------------------------------------------------------

    def describe_link(self, link: SourceLink) -> str:
        draft = Draft.from_json(link.draft, None)
        ports = ",".join(str(p) for p in draft.ports)
        return (
            f"Request port {ports} on {', '.join(draft.vms)} for "
            f"{format_duration(draft.duration)} from the address below?"
        )

    def link_refusal(self, link: SourceLink, address: str) -> str | None:
        """What the policies refuse in the link's request from ``address``, if anything."""
        found = self.problems(Draft.from_json(link.draft, address))
        if not found:
            return None
        return "Not sent: " + "; ".join(p.text.replace("`", "") for p in found)

    def complete_link(self, link: SourceLink, address: str) -> LinkOutcome:
        """A link was just used from ``address``: submit its draft from there.

        The RBAC checks ran when the link was made, minutes ago at most; approval checks
        the requester's roles again.
        """
        draft = Draft.from_json(link.draft, address)
        user_id = link.slack_user_id
        self.engine.store.audit(
            "source_link_used", user_id, None, address=address, vms=list(draft.vms)
        )
        try:
            requests = self._record(draft, user_id, link.team_id, address)
        except JitError as exc:
            self._dm_quietly(user_id, messages.error_text(exc.message))
            return LinkOutcome(False, f"Nothing was requested: {exc.message.replace('`', '')}")
        self._dm_quietly(user_id, messages.group_submitted_ack(requests))
        numbers = ", ".join(f"#{r.id}" for r in requests)
        return LinkOutcome(
            True,
            f"Sent to the approvers from {requests[0].source_prefix} (request {numbers}). "
            "jitbot tells you in Slack when it is decided; you can close this page.",
        )

    # -- saved source --------------------------------------------------------------------

    def saved_source(self, user_id: str) -> str | None:
        with self.engine.store.session() as session:
            saved = session.get(SavedSource, user_id)
        return saved.source if saved else None

    def source_command(self, command: SourceCommand, user_id: str) -> str:
        store = self.engine.store
        if command.action == "show":
            return messages.saved_source_text(self.saved_source(user_id))
        if command.action == "clear":
            with store.session() as session:
                saved = session.get(SavedSource, user_id)
                if saved is not None:
                    session.delete(saved)
                    session.commit()
            if saved is not None:
                store.audit("source_cleared", user_id, None)
            return messages.source_cleared(saved is not None)
        assert command.value is not None
        try:
            source = canonical_source(command.value)
        except InvalidSource as exc:
            return messages.error_text(exc.message)
        with store.session() as session:
            saved = session.get(SavedSource, user_id)
            if saved is None:
                session.add(SavedSource(slack_user_id=user_id, source=source, set_at=utcnow()))
            else:
                saved.source, saved.set_at = source, utcnow()
                session.add(saved)
            session.commit()
        store.audit("source_saved", user_id, None, source=source)
        return messages.source_saved(source)

    # -- the form ------------------------------------------------------------------------

    def open_form(self, body: dict[str, Any], respond: Any) -> None:
        """Open the form at once (a loading view), then fill it with what the user may
        request; Slack's trigger_id lasts three seconds, the Azure checks may not."""
        user_id = body["user_id"]
        try:
            opened = self.client.views_open(
                trigger_id=str(body.get("trigger_id", "")),
                view=messages.request_form_loading_view(),
            )
        except SlackApiError as exc:
            error = exc.response.get("error")
            log.info("request form for %s did not open: %s", user_id, error)
            text = messages.form_expired() if error == "expired_trigger_id" else None
            respond(
                text=text or messages.form_failed(),
                response_type="ephemeral",
                replace_original=False,
            )
            return
        view_id = opened["view"]["id"]
        try:
            view = self._form_for(user_id)
        except GateRefusal as exc:
            view = messages.request_form_message_view(exc.text)
        except Exception:
            log.exception("filling the request form for %s failed", user_id)
            view = messages.request_form_message_view(messages.form_failed())
        self.client.views_update(view_id=view_id, view=view)

    def _form_for(self, user_id: str) -> dict[str, Any]:
        policies = self.engine.policies.policies
        vms = self.gate.requestable_vms(user_id, policy_vm_names(policies))
        if not vms:
            return messages.request_form_message_view(messages.no_requestable_vms())
        ports: dict[int, str] = {}
        for vm in vms:
            for rule in self.engine.policy_for(vm).ports:
                ports.setdefault(rule.port, rule.protocol)
        return messages.request_form_view(vms, sorted(ports.items()), self.saved_source(user_id))

    def read_form(self, view: dict[str, Any]) -> tuple[Draft | None, dict[str, str]]:
        """The draft in a submitted form, or the errors per block (``response_action``)."""
        values = (view.get("state") or {}).get("values") or {}

        def field(block: str, action: str) -> dict[str, Any]:
            value = (values.get(block) or {}).get(action)
            return value if isinstance(value, dict) else {}

        errors: dict[str, str] = {}
        vms = _selected(field(messages.FORM_VMS_BLOCK, messages.FORM_VMS_INPUT))
        if not vms:
            errors[messages.FORM_VMS_BLOCK] = "Choose at least one VM."
        elif len(vms) > MAX_VMS:
            errors[messages.FORM_VMS_BLOCK] = f"Choose at most {MAX_VMS} VMs."
        port_texts = _selected(field(messages.FORM_PORTS_BLOCK, messages.FORM_PORTS_INPUT))
        ports = tuple(int(p) for p in port_texts if p.isascii() and p.isdigit() and len(p) <= 5)
        if not ports or len(ports) != len(port_texts):
            errors[messages.FORM_PORTS_BLOCK] = "Choose at least one port from the list."
        elif len(ports) > MAX_PORTS:
            errors[messages.FORM_PORTS_BLOCK] = f"Choose at most {MAX_PORTS} ports."
        duration_text = _text(field(messages.FORM_DURATION_BLOCK, messages.FORM_DURATION_INPUT))
        duration = timedelta(0)
        try:
            duration = parse_duration(duration_text)
        except ValueError as exc:
            errors[messages.FORM_DURATION_BLOCK] = _clip(str(exc))
        source = _text(field(messages.FORM_SOURCE_BLOCK, messages.FORM_SOURCE_INPUT)) or None
        reason = _text(field(messages.FORM_REASON_BLOCK, messages.FORM_REASON_INPUT))
        if len(reason) > MAX_REASON:
            errors[messages.FORM_REASON_BLOCK] = f"At most {MAX_REASON} characters."
        if errors:
            return None, errors
        draft = Draft(tuple(vms), ports, duration, source, reason)
        for problem in self.problems(draft):
            previous = errors.get(problem.block)
            errors[problem.block] = _clip(
                f"{previous} {problem.text}" if previous else problem.text
            )
        if errors:
            self.engine.observer.request_event("rejected", None)
            return None, errors
        return draft, {}

    def submit_form(self, draft: Draft, user_id: str, team_id: str) -> None:
        """After the form closed: the rest of the checks, the answer by direct message."""
        self.finish(draft, user_id, team_id, lambda text, blocks: self._dm(user_id, text, blocks))

    def _dm_quietly(self, user_id: str, text: str) -> None:
        """A DM whose failure is only logged: the web page already tells the user."""
        try:
            self._dm(user_id, text)
        except Exception as exc:
            log.warning("could not tell %s about their link: %s", user_id, type(exc).__name__)

    def _dm(self, user_id: str, text: str, blocks: list[dict[str, Any]] | None = None) -> None:
        opened = self.client.conversations_open(users=user_id)
        arguments: dict[str, Any] = {"channel": opened["channel"]["id"], "text": text}
        if blocks:
            arguments["blocks"] = blocks
        self.client.chat_postMessage(**arguments, unfurl_links=False)


FORM_ERROR_LIMIT = 300


def _clip(text: str) -> str:
    return text if len(text) <= FORM_ERROR_LIMIT else text[: FORM_ERROR_LIMIT - 1] + "…"


def _block_of(exc: RequestRejected) -> str:
    if isinstance(exc, PortNotAllowed):
        return messages.FORM_PORTS_BLOCK
    if isinstance(exc, DurationOutOfBounds):
        return messages.FORM_DURATION_BLOCK
    if isinstance(exc, InvalidSource):
        return messages.FORM_SOURCE_BLOCK
    return messages.FORM_VMS_BLOCK


def _per_vm(vm: str, exc: RequestRejected, count: int) -> str:
    return exc.message if count == 1 else f"{vm}: {exc.message}"


def _selected(value: dict[str, Any]) -> list[str]:
    options = value.get("selected_options") or []
    return [str(o.get("value", "")) for o in options if isinstance(o, dict)]


def _text(value: dict[str, Any]) -> str:
    return str(value.get("value") or "").strip()


def _names(engine: Engine, vms: tuple[str, ...]) -> list[str]:
    names = []
    for vm in vms:
        try:
            names.append(engine.policy_for(vm).match(vm) or vm)
        except JitError:
            names.append(vm)
    return names


def _logged(work: Any, *args: Any) -> None:
    try:
        work(*args)
    except Exception:
        log.exception("background work %s%s failed", getattr(work, "__name__", work), args)
