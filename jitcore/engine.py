"""The use cases of just-in-time access: request, approve, deny, open, expire, sweep.

A request moves through ``pending -> approved -> opening -> active -> closing -> closed``
and may end ``denied``, ``expired`` (never decided in time), ``failed`` or ``revoked``.
Every move is a compare-and-set in the database (:meth:`Store.transition`), so each
happens once however many clicks, retries or threads race for it.

Cloud changes follow one discipline: the intended change is stored (a Grant row in
``creating`` or ``removing``) before the call to Azure, and the outcome after it. A crash
at any point therefore leaves a row saying what may be half done, which
:meth:`Engine.recover` finishes or undoes at the next start.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import delete, update
from sqlmodel import col, select

from jitcore.azure.firewall import (
    DnatRule,
    FirewallGateway,
    FirewallInfo,
    dnat_description,
    dnat_rule_name,
    policy_managed_message,
)
from jitcore.azure.inventory import VmNetwork
from jitcore.db import AUDIT_LINE_EVENT, SYSTEM_ACTOR, Store
from jitcore.defender_access import GRANT_KIND as DEFENDER_GRANT
from jitcore.defender_access import DefenderAccess, DefenderCloud, is_defender
from jitcore.durations import format_duration
from jitcore.errors import (
    CloudError,
    JitError,
    NotAuthorized,
    PlacementError,
    RequestRejected,
    StateConflict,
)
from jitcore.model import (
    AccessRequest,
    Approval,
    AuditEvent,
    Grant,
    GrantState,
    Notification,
    RequestStatus,
    utcnow,
)
from jitcore.notify import DeliverySteps, Notifier, RestoreReport, current_delivery
from jitcore.observe import NULL_OBSERVER, Observer, counts_rejections
from jitcore.planner import (
    ALLOW_PREFIX,
    AllowSpec,
    Rule,
    differences,
    parse_allow_description,
    plan_allow,
    rule_description,
)
from jitcore.policy import (
    AutoApproveRule,
    CheckedRequest,
    Policy,
    check_request,
    find_policy,
    is_user_group,
)

log = logging.getLogger(__name__)

NOTIFY_CLAIM_SECONDS = 60.0
MAX_NOTIFY_ATTEMPTS = 20
EXPIRY_EARLY_TOLERANCE = 2.0
"""Seconds an expiry job may fire before the end; it then waits rather than skipping."""
LIVE_STATUSES = (RequestStatus.OPENING, RequestStatus.ACTIVE, RequestStatus.CLOSING)
PRIORITY_CONFLICT_CODES = frozenset({"SecurityRuleConflict", "SecurityRuleParameterConflict"})
EXTEND_LEASE_TRIES = 25
EXTEND_LEASE_WAIT = 0.2
"""An extension waits up to 5 seconds for another worker (opening, sweeping) to let go."""
EXTEND_BUTTON_STEP = timedelta(minutes=30)
"""How much later the Extend button of an expiry warning moves the end (capped)."""
NOTICES_WITH_ARGS = frozenset(
    {
        "request_extended",
        "request_expiring",
        "defender_closed",
        "defender_end_pending",
        "request_partly_approved",
        "request_reminded",
        AUDIT_LINE_EVENT,
    }
)
"""Notices whose notifier method takes the notice's arguments besides the request."""


AUTO_APPROVAL_WINDOW = timedelta(days=1)
"""The rolling window of an auto-approval rule's ``max_per_day``."""


class AlreadyExtended(RequestRejected):
    """The Extend button was already used for this warning: the end is past what it
    offered."""

    def __init__(self, request_id: int, ends_at: datetime) -> None:
        super().__init__(
            f"request #{request_id} was already extended; it now ends at "
            f"{ends_at.strftime('%Y-%m-%d %H:%M UTC')}"
        )
        self.request_id = request_id
        self.ends_at = ends_at


class AlreadyCounted(StateConflict):
    """The approver's approval of a still-pending request was counted before; the
    request waits for another approver."""

    def __init__(self, request_id: int) -> None:
        super().__init__(
            f"your approval of request #{request_id} is already counted; it needs another approver",
            RequestStatus.PENDING,
        )
        self.request_id = request_id


class ApproversUnavailable(NotAuthorized):
    """The members of an approver user group could not be read, so nobody can be
    authorized through it right now."""


class ExtensionTooLong(RequestRejected):
    """An extension would keep access open past the policy's maximum, counted from when
    access opened (Defender's cap). Going further needs a new request and approval."""

    def __init__(self, request_id: int, limit: datetime, longest: timedelta) -> None:
        super().__init__(
            f"request #{request_id} may stay open until {limit:%Y-%m-%d %H:%M:%S} UTC at most, "
            "the policy's maximum from when access opened; the longest extension now is "
            f"{format_duration(longest)}. Going further needs a new request and approval"
        )
        self.request_id = request_id
        self.limit = limit
        self.longest = longest


class NetworkCloud(Protocol):
    """The cloud operations the engine needs; ``jitcore.azure.AzureNetwork`` provides them."""

    def network_of(self, vm: str) -> VmNetwork: ...

    def lock_for(self, nsg_id: str) -> threading.Lock: ...

    def custom_rules(self, nsg_id: str) -> list[dict[str, Any]]: ...

    def get_rule(self, nsg_id: str, name: str) -> dict[str, Any] | None: ...

    def create_rule(self, nsg_id: str, name: str, properties: dict[str, Any]) -> dict[str, Any]: ...

    def delete_rule(self, nsg_id: str, name: str) -> None: ...


@dataclass
class PolicySet:
    """The policies in force and the stored version of each."""

    policies: list[Policy]
    versions: dict[str, int]
    refused: dict[str, str] = field(default_factory=dict)
    """Policy name -> why it is not in force (a ``defender`` policy without Defender for
    Servers Plan 2). Requests for its VMs are refused with that reason."""

    def by_name(self, name: str) -> Policy | None:
        return next((p for p in self.policies if p.name == name), None)


class PolicyRefused(RequestRejected):
    """The policy covering the VM was refused when loaded; the message says why."""

    def __init__(self, policy: str, reason: str) -> None:
        super().__init__(f"policy {policy} is not in force: {reason}")
        self.policy = policy
        self.reason = reason


class Engine:
    observer: Observer = NULL_OBSERVER

    def __init__(
        self,
        store: Store,
        policies: PolicySet,
        cloud: NetworkCloud,
        notifier: Notifier,
        on_active: Callable[[AccessRequest], None] | None = None,
        clock: Callable[[], datetime] = utcnow,
        pending_timeout: timedelta = timedelta(hours=1),
        lease_seconds: float = 300.0,
        firewalls: FirewallGateway | None = None,
        max_pending_per_requester: int = 5,
        defender: DefenderCloud | None = None,
        group_members: Callable[[str], list[str]] | None = None,
    ) -> None:
        self.store = store
        self.policies = policies
        self.cloud = cloud
        self.notifier = notifier
        self.on_active = on_active
        self.clock = clock
        self.pending_timeout = pending_timeout
        self.lease_seconds = lease_seconds
        self.firewalls = firewalls
        self.max_pending_per_requester = max_pending_per_requester
        self.defender = DefenderAccess(self, defender) if defender is not None else None
        self.group_members = group_members
        """Reads a Slack user group's members (user ids); asked at every decision."""
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._busy: set[int] = set()
        self._busy_guard = threading.Lock()
        self._unrecorded: dict[int, tuple[datetime, str | None, bool]] = {}
        """Delivery outcomes the database could not take (see :meth:`_record_delivery`)."""

    # -- requesting and deciding -------------------------------------------------------

    def check(self, vm: str, ports: list[int], duration: timedelta, source: str) -> CheckedRequest:
        """Validate a request against the policy without recording anything."""
        checked = check_request(self.policies.policies, vm, ports, duration, source)
        reason = self.policies.refused.get(checked.policy.name)
        if reason is not None:
            raise PolicyRefused(checked.policy.name, reason)
        return checked

    def check_defender_plans(self) -> dict[str, str]:
        """At start: refuse each ``defender`` policy whose subscription lacks Defender for
        Servers Plan 2 (or cannot use Defender at all), write the Defender JIT policies of
        the others' VMs; return the refusals."""
        defender_policies = [p for p in self.policies.policies if is_defender(p)]
        if not defender_policies:
            return {}
        if self.defender is None:
            refusals = {
                p.name: "no Defender for Cloud client is configured" for p in defender_policies
            }
        else:
            refusals = self.defender.plan_refusals(defender_policies)
        self.policies.refused.update(refusals)
        if self.defender is not None:
            self.defender.sync_all(defender_policies, self.policies.refused)
        return refusals

    @counts_rejections
    def submit(
        self,
        team_id: str,
        requester_id: str,
        vm: str,
        ports: list[int],
        duration: timedelta,
        source: str,
        reason: str = "",
    ) -> AccessRequest:
        """Record a new pending request; raises RequestRejected (and records nothing) if the
        policy does not allow it."""
        [request] = self._submit([vm], team_id, requester_id, ports, duration, source, reason)
        return request

    @counts_rejections
    def submit_group(
        self,
        team_id: str,
        requester_id: str,
        vms: list[str],
        ports: list[int],
        duration: timedelta,
        source: str,
        reason: str = "",
    ) -> list[AccessRequest]:
        """Record one pending request per VM, linked by a group id, all or none.

        Every VM is checked first; if any is refused, nothing is recorded and the
        RequestRejected names what was wrong with each refused VM. Each request then lives
        on its own (approval, expiry, extension and revocation are per VM).
        """
        return self._submit(vms, team_id, requester_id, ports, duration, source, reason)

    def _submit(
        self,
        vms: list[str],
        team_id: str,
        requester_id: str,
        ports: list[int],
        duration: timedelta,
        source: str,
        reason: str,
    ) -> list[AccessRequest]:
        checked_all = self._check_each(vms, ports, duration, source)
        for checked in checked_all:
            self._require_enough_approvers(checked.policy, requester_id)
        waiting = self.requests_of(requester_id, (RequestStatus.PENDING,))
        if len(waiting) + len(checked_all) > self.max_pending_per_requester:
            raise RequestRejected(
                f"you already have {len(waiting)} requests waiting for a decision (at most "
                f"{self.max_pending_per_requester}); wait for them or ask an approver"
            )
        group_id = uuid.uuid4().hex if len(checked_all) > 1 else None
        requests = [
            AccessRequest(
                team_id=team_id,
                requester_id=requester_id,
                vm_name=checked.vm_name,
                ports=",".join(str(p) for p in checked.ports),
                protocol=checked.protocol,
                source_prefix=checked.source_prefix,
                duration_seconds=int(checked.duration.total_seconds()),
                reason=reason,
                policy_name=checked.policy.name,
                policy_version=self.policies.versions.get(checked.policy.name, 1),
                status=RequestStatus.PENDING,
                created_at=self.clock(),
                approval_channel=checked.policy.approval_channel,
                group_id=group_id,
            )
            for checked in checked_all
        ]
        auto_rules = [checked.policy.auto_rule_for(checked) for checked in checked_all]
        with self.store.session() as session:
            for request, auto_rule in zip(requests, auto_rules, strict=True):
                session.add(request)
                session.flush()
                assert request.id is not None
                detail: dict[str, Any] = {
                    "vm": request.vm_name,
                    "ports": request.ports,
                    "source": request.source_prefix,
                    "duration_seconds": request.duration_seconds,
                    "reason": reason,
                    "policy": f"{request.policy_name}@{request.policy_version}",
                }
                if group_id is not None:
                    detail["group"] = group_id
                session.add(
                    AuditEvent(
                        at=self.clock(),
                        request_id=request.id,
                        actor=requester_id,
                        action="requested",
                        detail=detail,
                    )
                )
                if auto_rule is None:
                    session.add(self.store.notification(request.id, "request_submitted", {}))
                else:
                    session.add(
                        Approval(
                            request_id=request.id,
                            approver_id=f"auto:{auto_rule.name}",
                            kind="auto",
                            at=self.clock(),
                        )
                    )
            session.commit()
            for request in requests:
                session.refresh(request)
        for request in requests:
            log.info("request %s submitted by %s for %s", request.id, requester_id, request.vm_name)
            self.observer.request_event("submitted", request)
        settled: list[AccessRequest] = []
        for request, auto_rule in zip(requests, auto_rules, strict=True):
            assert request.id is not None
            if auto_rule is not None:
                self._auto_approve(request.id)
                request = self._require(request.id)
            settled.append(request)
        return settled

    def _check_each(
        self, vms: list[str], ports: list[int], duration: timedelta, source: str
    ) -> list[CheckedRequest]:
        """Check every VM; one refusal is raised as it is, several are gathered per VM."""
        checked: list[CheckedRequest] = []
        refused: list[tuple[str, RequestRejected]] = []
        for vm in vms:
            try:
                checked.append(self.check(vm, ports, duration, source))
            except RequestRejected as exc:
                refused.append((vm, exc))
        if len(vms) == 1 and refused:
            raise refused[0][1]
        if refused:
            raise RequestRejected(
                "nothing was requested: " + "; ".join(f"{vm}: {exc.message}" for vm, exc in refused)
            )
        names = [c.vm_name.lower() for c in checked]
        if len(names) != len(set(names)):
            raise RequestRejected("the same VM is named twice; name each VM once")
        return checked

    def _auto_approve(self, request_id: int) -> None:
        """Approve a pending request by the auto-approval rule counted for it at
        submission, if that stays within the rule's daily limit.

        The rule's approval row was stored with the request. It is within the rule's
        ``max_per_day`` for this requester when few enough earlier rows of the rule exist
        (earlier rows first, so racing requests cannot both take the last one); the
        request then moves to approved. Past the limit (or if the rule is gone from the
        policy) the row is taken back and the request goes to the approvers like any
        other. The sweep calls this again for a request left between the two steps.
        """
        request = self._require(request_id)
        approval = next((a for a in self.store.approvals(request_id) if a.kind == "auto"), None)
        if request.status != RequestStatus.PENDING or approval is None:
            return
        policy = self.policies.by_name(request.policy_name)
        name = approval.approver_id.removeprefix("auto:")
        rule = next((r for r in policy.auto_approve if r.name == name), None) if policy else None
        now = self.clock()
        used = self.store.auto_approvals_until(
            approval, request.requester_id, request.policy_name, now - AUTO_APPROVAL_WINDOW
        )
        if rule is None or used > rule.max_per_day:
            self._send_to_approvers(approval, rule)
            return
        detail = {"rule": rule.name, "max_per_day": rule.max_per_day}
        if self.store.transition(
            request_id,
            (RequestStatus.PENDING,),
            RequestStatus.APPROVED,
            notify=("request_auto_approved", {"rule": rule.name}),
            audit=("auto_approved", approval.approver_id, detail),
            decided_at=now,
            decided_by=approval.approver_id,
        ):
            log.info("request %s auto-approved by rule %s", request_id, rule.name)
            self.observer.request_event("auto_approved", self._require(request_id))

    def _send_to_approvers(self, approval: Approval, rule: AutoApproveRule | None) -> None:
        """Take back a rule's approval that may not count, and post the request to the
        approvers instead: one transaction, so exactly one replica does it."""
        detail = {"rule": approval.approver_id.removeprefix("auto:")}
        if rule is not None:
            detail["max_per_day"] = str(rule.max_per_day)
        statement = delete(Approval).where(col(Approval.id) == approval.id)
        with self.store.session() as session:
            if session.execute(statement).rowcount != 1:  # type: ignore[attr-defined]
                session.rollback()
                return
            session.add(self.store.notification(approval.request_id, "request_submitted", {}))
            session.add(
                AuditEvent(
                    at=self.clock(),
                    request_id=approval.request_id,
                    actor=approval.approver_id,
                    action="auto_approval_limit_reached" if rule else "auto_approval_rule_gone",
                    detail=detail,
                )
            )
            session.commit()
        log.info("request %s: sent to the approvers (%s)", approval.request_id, detail)

    def settle_submitted(self, request_id: int) -> None:
        """After a submission: open it at once if a rule approved it, then tell people."""
        request = self._require(request_id)
        if request.status == RequestStatus.APPROVED:
            self.open(request_id)
        self.deliver(request_id)

    def deliver(self, request_id: int | None = None) -> None:
        """Deliver queued notifications (of one request, or all), oldest first.

        Each is claimed before it is sent, so of several workers one sends it; a failed
        one is tried again by the sweep, and later news of the same request waits for it,
        so people read events in the order they happened. Delivery is at least once: a
        crash between sending and recording the send repeats that one message.
        """
        self._record_held_deliveries()
        stuck: set[tuple[int, bool]] = set()
        for note in self.store.pending_notifications(request_id):
            # Audit-channel lines keep their own order, so a broken audit channel never
            # holds back what requesters and approvers are told, nor the other way round.
            lane = (note.request_id, note.event == AUDIT_LINE_EVENT)
            if lane in stuck:
                continue
            now = self.clock()
            claim_until = now + timedelta(seconds=min(NOTIFY_CLAIM_SECONDS, self.lease_seconds))
            assert note.id is not None
            try:
                claimed = self.store.claim_notification(note.id, self.worker_id, now, claim_until)
            except Exception as exc:
                # The claim may be stored with only its answer lost (the database went
                # away meanwhile): release it once the database is back, if it is ours.
                self._hold_delivery(note.id, now, type(exc).__name__, give_up=False)
                raise
            if not claimed:
                stuck.add(lane)
                continue
            try:
                self._send(note)
            except Exception as exc:
                stuck.add(lane)
                give_up = note.attempts + 1 >= MAX_NOTIFY_ATTEMPTS
                self._record_delivery(note.id, error=type(exc).__name__, give_up=give_up)
                log.warning(
                    "notifying %s for request %s failed (%s); %s",
                    note.event,
                    note.request_id,
                    type(exc).__name__,
                    "giving up" if give_up else "the sweep retries",
                )
                self.store.audit(
                    "notify_failed",
                    SYSTEM_ACTOR,
                    note.request_id,
                    event=note.event,
                    error=type(exc).__name__,
                    gave_up=give_up,
                )
                continue
            self._record_delivery(note.id)

    def _record_delivery(
        self, notification_id: int, error: str | None = None, give_up: bool = False
    ) -> None:
        """Record how a claimed notification's delivery went.

        When the database fails right then (an outage beginning), the outcome is kept in
        memory and recorded by this worker's next delivery round, once the database is
        back. Otherwise the claim would stay until it runs out (a minute), holding back
        every later notice of the request, and a message already sent would be sent again.
        """
        at = self.clock()
        try:
            self.store.finish_notification(notification_id, at, error=error, give_up=give_up)
        except Exception:
            self._hold_delivery(notification_id, at, error, give_up)
            raise

    def _hold_delivery(
        self, notification_id: int, at: datetime, error: str | None, give_up: bool
    ) -> None:
        with self._busy_guard:
            self._unrecorded[notification_id] = (at, error, give_up)

    def _record_held_deliveries(self) -> None:
        """Record the delivery outcomes the database could not take earlier; each only
        while this worker still holds the claim, so a claim taken since by another
        worker is left alone."""
        with self._busy_guard:
            held = dict(self._unrecorded)
        for notification_id, (at, error, give_up) in held.items():
            self.store.finish_notification(
                notification_id, at, error=error, give_up=give_up, owner=self.worker_id
            )
            with self._busy_guard:
                self._unrecorded.pop(notification_id, None)

    def _send(self, note: Notification) -> None:
        assert note.id is not None
        note_id = note.id
        steps = DeliverySteps(
            set(note.steps_done or []),
            lambda step: self.store.record_notification_step(note_id, self.worker_id, step),
        )
        token = current_delivery.set(steps)
        try:
            self._send_now(note)
        finally:
            current_delivery.reset(token)

    def _send_now(self, note: Notification) -> None:
        request = self._require(note.request_id)
        if note.event in ("request_submitted", "request_auto_approved"):
            if note.event == "request_submitted":
                posted = self.notifier.request_submitted(request)
            else:
                posted = self.notifier.request_auto_approved(request, str(note.args["rule"]))
            if posted is not None:
                self.store.update_request(
                    request.id, approval_channel=posted.channel, approval_ts=posted.ts
                )
        elif note.event == "request_granted":
            self.notifier.request_granted(request, self.grants_of(note.request_id))
        elif note.event == "request_failed":
            self.notifier.request_failed(request, str(note.args.get("reason", "")))
        elif note.event == "request_closed":
            self.notifier.request_closed(request, RestoreReport.from_json(note.args))
        elif note.event == "request_partly_approved":
            args = {**note.args, "approved_by": self.approvers_who_approved(request.id)}
            self.notifier.request_partly_approved(request, args)
        elif note.event in NOTICES_WITH_ARGS:
            getattr(self.notifier, note.event)(request, dict(note.args))
        else:
            getattr(self.notifier, note.event)(request)

    def approvers_of(self, request: AccessRequest, strict: bool = False) -> list[str]:
        """The user ids who approve ``request``: the policy's users and the current members
        of its user groups, read from Slack now (never from a click).

        A group whose members cannot be read counts as empty, failing closed; with
        ``strict`` it raises ApproversUnavailable instead, so a decision can say why.
        """
        policy = self.policies.by_name(request.policy_name)
        if policy is None:
            return []
        users: list[str] = []
        for entry in policy.approvers:
            members = self._members(entry, strict) if is_user_group(entry) else [entry]
            users.extend(m for m in members if m not in users)
        return users

    def _members(self, group: str, strict: bool) -> list[str]:
        try:
            if self.group_members is None:
                raise LookupError("no way to read Slack user groups is configured")
            return list(self.group_members(group))
        except Exception as exc:
            log.warning("could not read the members of user group %s: %s", group, exc)
            if strict:
                raise ApproversUnavailable(
                    f"jitbot could not read the members of the approver group {group} "
                    "from Slack, so nothing changed; try again in a minute"
                ) from None
            return []

    def _require_enough_approvers(self, policy: Policy, requester_id: str) -> None:
        """Refuse a request that could never be approved: the policy wants more distinct
        approvers than it has besides the requester. When a user group cannot be read
        now, the request goes ahead (the decision reads the group again)."""
        if policy.approvals_required <= 1:
            return
        others: set[str] = set()
        for entry in policy.approvers:
            try:
                members = self._members(entry, strict=True) if is_user_group(entry) else [entry]
            except ApproversUnavailable:
                return
            others.update(m for m in members if m != requester_id)
        if len(others) < policy.approvals_required:
            raise RequestRejected(
                f"policy {policy.name} needs {policy.approvals_required} approvers other than "
                f"you, and has {len(others)}; ask its owners to add approvers"
            )

    def approves_anything(self, user_id: str) -> bool:
        """Whether ``user_id`` approves for any policy (directly or through a group)."""
        return any(self.approves_for(user_id, policy) for policy in self.policies.policies)

    def approves_for(self, user_id: str, policy: Policy) -> bool:
        """Whether ``user_id`` is an approver of ``policy``, directly or as a current member
        of one of its user groups (a group that cannot be read counts as empty)."""
        if user_id in policy.approvers:
            return True
        return any(user_id in self._members(g, False) for g in policy.approver_groups)

    def approvals_required(self, request: AccessRequest) -> int:
        policy = self.policies.by_name(request.policy_name)
        return policy.approvals_required if policy else 1

    def authorize_decision(self, request: AccessRequest, actor_id: str) -> None:
        """Raise NotAuthorized unless ``actor_id`` may decide ``request`` right now."""
        if actor_id == request.requester_id:
            raise NotAuthorized("you cannot approve or deny your own request")
        approvers = self.approvers_of(request, strict=True)
        if actor_id not in approvers:
            raise NotAuthorized(
                f"only the approvers of policy {request.policy_name} can decide this request"
            )

    def approve(
        self, request_id: int, approver_id: str, network: VmNetwork | None = None
    ) -> AccessRequest:
        """Count an approval; the one that completes the policy's ``approvals_required``
        approves the request and opens access (with ``network``, the VM's network read
        for this click's checks, when given: see ``open``).

        Each approver counts once (a unique row per request and approver); the final
        move to approved is the usual compare-and-set, so of approvers clicking at once,
        on any replicas, exactly one opens access and the others hear who did. Raises
        NotAuthorized, AlreadyCounted or StateConflict.
        """
        request = self._require(request_id)
        self._authorized_or_audited(request, approver_id)
        if request.status != RequestStatus.PENDING:
            self._refuse_decided(request_id, approver_id)
        required = self.approvals_required(request)
        counted = self.store.add_approval(
            request_id,
            approver_id,
            "user",
            self.clock(),
            required,
            partial=("request_partly_approved", {"required": required}),
        )
        if counted is None:
            if self._require(request_id).status != RequestStatus.PENDING:
                self._refuse_decided(request_id, approver_id)
            self.store.audit(
                "decision_refused", approver_id, request_id, reason="approval already counted"
            )
            raise AlreadyCounted(request_id)
        approval, seen = counted
        count = seen if seen >= required else len(self.store.approvals(request_id))
        if count < required:
            log.info("request %s: approval %s/%s by %s", request_id, count, required, approver_id)
            self.deliver(request_id)
            return self._require(request_id)
        try:
            self._decide(
                request_id,
                approver_id,
                RequestStatus.APPROVED,
                "approved",
                approvals=f"{min(count, required)}/{required}",
                deliver=False,
            )
        except (StateConflict, NotAuthorized):
            self._take_back_unneeded(approval, required)
            raise
        self._open_while_announcing(request_id, network)
        return self._require(request_id)

    def _open_while_announcing(self, request_id: int, network: VmNetwork | None) -> None:
        """Open access while the approval is being announced in Slack.

        The approval's news is queued in the database already; sending it on a thread of
        its own keeps Slack's answer time out of the way to the rule. A later message of
        the request that found the approval still being sent waited for it (see
        ``deliver``) without being tried; it is sent here. A message that was tried and
        failed is left to the sweep, as everywhere else.
        """
        announcing = threading.Thread(
            target=self._deliver_logged, args=(request_id,), name=f"jitbot-announce-{request_id}"
        )
        announcing.start()
        try:
            self.open(request_id, network)
        finally:
            announcing.join()
        if any(note.attempts == 0 for note in self.store.pending_notifications(request_id)):
            self.deliver(request_id)

    def _deliver_logged(self, request_id: int) -> None:
        try:
            self.deliver(request_id)
        except Exception:
            log.exception("delivering the news of request %s failed; the sweep retries", request_id)

    def _take_back_unneeded(self, approval: Approval, required: int) -> None:
        """After losing the race to approve: keep the approval if the request was approved
        with it counted (another approver's click completed the same count), otherwise
        remove it, so the approvals table holds only approvals that took effect."""
        assert approval.id is not None
        status = self._require(approval.request_id).status
        others = [a for a in self.store.approvals(approval.request_id) if a.id != approval.id]
        undecided_or_refused = (RequestStatus.PENDING, RequestStatus.DENIED, RequestStatus.EXPIRED)
        approved = status not in undecided_or_refused
        if not approved or len(others) >= required:
            self.store.remove_approval(approval.id)

    def _authorized_or_audited(self, request: AccessRequest, actor_id: str) -> None:
        try:
            self.authorize_decision(request, actor_id)
        except NotAuthorized as exc:
            self.store.audit("decision_refused", actor_id, request.id, reason=exc.message)
            raise

    def _refuse_decided(self, request_id: int, actor_id: str) -> None:
        """Raise the late-click refusal naming who decided, audited."""
        current = self._require(request_id)
        self.store.audit(
            "decision_refused", actor_id, request_id, reason=f"already {current.status}"
        )
        raise StateConflict(
            f"request #{request_id} was already {current.status}",
            current.status,
            current.decided_by,
        )

    def approvers_who_approved(self, request_id: int) -> list[str]:
        return [a.approver_id for a in self.store.approvals(request_id)]

    def deny(self, request_id: int, approver_id: str, note: str = "") -> AccessRequest:
        """Deny a pending request; nothing in the cloud is touched."""
        return self._decide(
            request_id, approver_id, RequestStatus.DENIED, "denied", note=note or None
        )

    def _decide(
        self,
        request_id: int,
        actor_id: str,
        outcome: str,
        action: str,
        note: str | None = None,
        approvals: str | None = None,
        deliver: bool = True,
    ) -> AccessRequest:
        """Record one decision on a pending request, once, by someone allowed to make it;
        tell people unless ``deliver`` is False (the caller delivers).

        A refusal (not allowed, or already decided) is audited and raised.
        """
        request = self._require(request_id)
        try:
            self.authorize_decision(request, actor_id)
        except NotAuthorized as exc:
            self.store.audit("decision_refused", actor_id, request_id, reason=exc.message)
            raise
        detail: dict[str, Any] = {"note": note} if note else {}
        if approvals is not None:
            detail["approvals"] = approvals
        decided = self.store.transition(
            request_id,
            (RequestStatus.PENDING,),
            outcome,
            notify=(f"request_{action}", {}),
            audit=(action, actor_id, detail),
            decided_at=self.clock(),
            decided_by=actor_id,
            decision_note=note,
        )
        if not decided:
            current = self._require(request_id)
            self.store.audit(
                "decision_refused", actor_id, request_id, reason=f"already {current.status}"
            )
            raise StateConflict(
                f"request #{request_id} was already {current.status}",
                current.status,
                current.decided_by,
            )
        log.info("request %s %s by %s", request_id, action, actor_id)
        decided_request = self._require(request_id)
        self.observer.request_event(action, decided_request)
        if deliver:
            self.deliver(request_id)
        return decided_request

    # -- opening -----------------------------------------------------------------------

    def open(self, request_id: int, network: VmNetwork | None = None) -> None:
        """Create the allow rules of an approved request and make it active.

        ``network`` is the VM's network read moments ago for the same approval (the
        click's access checks); the VM's network is read from Azure when it is not given
        or is another VM's.
        """
        with self._exclusive(request_id) as mine:
            if not mine:
                return
            request = self._require(request_id)
            ends_at = self.clock() + timedelta(seconds=request.duration_seconds)
            if not self.store.transition(
                request_id, (RequestStatus.APPROVED,), RequestStatus.OPENING, ends_at=ends_at
            ):
                return
            request = self._require(request_id)
            policy = self.policies.by_name(request.policy_name)
            if is_defender(policy):
                assert policy is not None
                self._open_with_defender(request, policy)
                return
            try:
                if network is None or network.vm_name.lower() != request.vm_name.lower():
                    network = self.cloud.network_of(request.vm_name)
                if not network.nsg_ids:
                    raise PlacementError(
                        f"{request.vm_name} has no network security group on its NICs or "
                        "subnets, so JIT cannot protect or open it"
                    )
                policy = self.policies.by_name(request.policy_name)
                firewall = self._firewall_in_front(policy)
                nsg_source = f"{firewall.private_ip}/32" if firewall else request.source_prefix
                for nsg_id in network.nsg_ids:
                    self._open_in_nsg(request, network, nsg_id, nsg_source)
                if firewall is not None and policy is not None:
                    self._open_in_firewall(request, network, firewall, policy)
            except JitError as exc:
                self._fail(request, exc.message)
                return
            except Exception as exc:  # a bug or an unexpected SDK error: never leave it open
                log.exception("opening request %s failed unexpectedly", request_id)
                self._fail(request, f"unexpected error while opening: {type(exc).__name__}")
                return
            self._activate(request_id)

    def _open_with_defender(self, request: AccessRequest, policy: Policy) -> None:
        """Open through Defender for Cloud's JIT (see ``jitcore.defender_access``). The
        request becomes active once Defender reports the ports open; until then it stays
        opening and the sweep keeps following it."""
        assert request.id is not None
        try:
            if self.defender is None:
                raise PlacementError("no Defender for Cloud client is configured")
            reason = self.policies.refused.get(policy.name)
            if reason is not None:
                raise PolicyRefused(policy.name, reason)
            opened = self.defender.open(request, policy)
        except JitError as exc:
            self._fail(request, exc.message)
            return
        except Exception as exc:  # a bug or an unexpected SDK error
            log.exception("opening request %s through Defender failed unexpectedly", request.id)
            grant = self.defender.grant_of(request.id) if self.defender else None
            if grant is not None and grant.state != GrantState.REMOVED:
                return  # Defender may have opened it: the sweep follows it, never "failed"
            self._fail(request, f"unexpected error while opening: {type(exc).__name__}")
            return
        if opened:
            self._activate(request.id)

    def _firewall_in_front(self, policy: Policy | None) -> FirewallInfo | None:
        """The classic Azure Firewall the policy routes access through, if any."""
        if policy is None or not policy.firewall:
            return None
        if self.firewalls is None:
            raise PlacementError(f"policy {policy.name} names a firewall, but none is configured")
        info = self.firewalls.describe(policy.firewall)
        if info.policy_managed:
            raise PlacementError(policy_managed_message(info.name, policy.firewall))
        if not info.private_ip or not info.public_ips:
            raise PlacementError(f"the firewall {info.name} has no private or public address")
        return info

    def _open_in_firewall(
        self, request: AccessRequest, network: VmNetwork, firewall: FirewallInfo, policy: Policy
    ) -> None:
        """A DNAT rule per port: the requester's source to the firewall's public address,
        translated to the VM. Recorded before it is written, like NSG rules."""
        assert request.id is not None and request.ends_at is not None and self.firewalls
        for port in request.port_list:
            public_port = policy.firewall_ports.get(port, port)
            rule = DnatRule(
                name=dnat_rule_name(request.id, public_port),
                source_prefix=request.source_prefix,
                public_ip=firewall.public_ips[0],
                public_port=public_port,
                private_ip=network.primary_private_ip,
                private_port=port,
                protocol="TCP" if request.protocol in ("Tcp", "*") else "UDP",
                description=dnat_description(request.id, request.ends_at, request.vm_name),
            )
            grant = self._record_intent(
                request.id, firewall.id, rule.name, 0, rule.to_arm(), [], kind="dnat"
            )
            self.firewalls.add_dnat(firewall.id, rule)
            self._set_grant(grant, GrantState.PRESENT)
            self.store.audit(
                "rule_created",
                SYSTEM_ACTOR,
                request.id,
                firewall=firewall.id,
                rule=rule.name,
                public_port=public_port,
            )
            log.info("request %s: DNAT %s created in %s", request.id, rule.name, firewall.name)

    def _open_in_nsg(
        self, request: AccessRequest, network: VmNetwork, nsg_id: str, source_prefix: str
    ) -> None:
        assert request.id is not None and request.ends_at is not None
        source_version = ipaddress.ip_network(request.source_prefix).version
        destination_version = ipaddress.ip_address(network.primary_private_ip).version
        if source_version != destination_version:
            raise PlacementError(
                f"the source {request.source_prefix} is IPv{source_version} but "
                f"{request.vm_name} has an IPv{destination_version} address; ask again from "
                f"an IPv{destination_version} address"
            )
        spec = AllowSpec(
            request_id=request.id,
            vm_name=request.vm_name,
            source_prefix=source_prefix,
            destination=network.primary_private_ip,
            ports=tuple(request.port_list),
            protocol=request.protocol,
            ends_at=request.ends_at,
        )
        attempts = 3
        with self.cloud.lock_for(nsg_id):
            if self._share_existing_rule(request, nsg_id, spec):
                return
            for attempt in range(1, attempts + 1):
                baseline = self.cloud.custom_rules(nsg_id)
                rule = plan_allow([Rule.from_arm(r) for r in baseline], spec)
                grant = self._record_intent(
                    request.id, nsg_id, rule.name, rule.priority, rule.to_arm_properties(), baseline
                )
                try:
                    self.cloud.create_rule(nsg_id, rule.name, rule.to_arm_properties())
                except CloudError as exc:
                    self._settle_failed_create(grant, exc)
                    if exc.code in PRIORITY_CONFLICT_CODES and attempt < attempts:
                        log.warning(
                            "priority %s in %s was taken meanwhile; planning again",
                            rule.priority,
                            nsg_id,
                        )
                        continue
                    raise
                self._set_grant(grant, GrantState.PRESENT)
                self.store.audit(
                    "rule_created",
                    SYSTEM_ACTOR,
                    request.id,
                    nsg=nsg_id,
                    rule=rule.name,
                    priority=rule.priority,
                )
                log.info(
                    "request %s: rule %s created in %s at priority %s",
                    request.id,
                    rule.name,
                    nsg_id,
                    rule.priority,
                )
                return

    def _share_existing_rule(self, request: AccessRequest, nsg_id: str, spec: AllowSpec) -> bool:
        """Reuse the rule of a live grant for the same requester, VM, ports and source.

        The shared rule stays until the last grant needing it ends; its description is
        moved to the later end so that a replica without the database still expires it
        correctly.
        """
        assert request.id is not None
        twin = self._live_twin(request, nsg_id)
        if twin is None:
            return False
        later = max(spec.ends_at, self._end_of(twin.request_id))
        current = self.cloud.get_rule(nsg_id, twin.rule_name)
        if current is None:
            return False
        properties = dict(current.get("properties", {}))
        description = rule_description(
            AllowSpec(
                twin.request_id,
                spec.vm_name,
                spec.source_prefix,
                spec.destination,
                spec.ports,
                spec.protocol,
                later,
            )
        )
        shared_rule = {**twin.rule, "description": description}
        now = self.clock()
        if properties.get("description") != description:
            with self.store.session() as session:
                stored = session.get(Grant, twin.id)
                assert stored is not None
                stored.rule = shared_rule
                stored.updated_at = now
                session.add(stored)
                session.commit()
            wanted = {k: v for k, v in properties.items() if k not in ("provisioningState",)}
            wanted["description"] = description
            self.cloud.create_rule(nsg_id, twin.rule_name, wanted)
        with self.store.session() as session:
            session.add(
                Grant(
                    request_id=request.id,
                    nsg_id=nsg_id,
                    rule_name=twin.rule_name,
                    priority=twin.priority,
                    state=GrantState.PRESENT,
                    rule=shared_rule,
                    baseline=twin.baseline,
                    created_at=now,
                    updated_at=now,
                )
            )
            session.commit()
        self.store.audit(
            "rule_shared",
            SYSTEM_ACTOR,
            request.id,
            nsg=nsg_id,
            rule=twin.rule_name,
            with_request=twin.request_id,
        )
        log.info("request %s shares rule %s in %s", request.id, twin.rule_name, nsg_id)
        return True

    def _live_twin(self, request: AccessRequest, nsg_id: str) -> Grant | None:
        with self.store.session() as session:
            query = (
                select(Grant, AccessRequest)
                .join(AccessRequest, col(Grant.request_id) == col(AccessRequest.id))
                .where(Grant.state == GrantState.PRESENT)
                .where(col(AccessRequest.status).in_(LIVE_STATUSES))
                .where(AccessRequest.requester_id == request.requester_id)
                .where(AccessRequest.vm_name == request.vm_name)
                .where(AccessRequest.ports == request.ports)
                .where(AccessRequest.protocol == request.protocol)
                .where(AccessRequest.source_prefix == request.source_prefix)
                .where(AccessRequest.id != request.id)
            )
            for grant, _ in session.exec(query):
                if grant.nsg_id.lower() == nsg_id.lower():
                    return grant
        return None

    def _firewall_leftovers(self, request_id: int) -> list[str]:
        """DNAT rules of this request that are somehow still on their firewall."""
        dnat = [g for g in self.grants_of(request_id) if g.kind == "dnat"]
        if not dnat or self.firewalls is None:
            return []
        leftovers = []
        for firewall_id in {g.nsg_id for g in dnat}:
            try:
                present = {r.get("name") for r in self.firewalls.dnat_rules(firewall_id)}
            except CloudError as exc:
                leftovers.append(f"{_short(firewall_id)}: could not re-read ({exc.code})")
                continue
            leftovers.extend(
                f"{_short(firewall_id)}: {g.rule_name} is still present"
                for g in dnat
                if g.rule_name in present
            )
        return leftovers

    def _shared(self, rule: dict[str, Any]) -> bool:
        """Whether a rule of ours is still needed by a live grant of another request."""
        with self.store.session() as session:
            query = (
                select(Grant)
                .join(AccessRequest, col(Grant.request_id) == col(AccessRequest.id))
                .where(Grant.state == GrantState.PRESENT)
                .where(Grant.rule_name == rule["name"])
                .where(col(AccessRequest.status).in_((RequestStatus.OPENING, RequestStatus.ACTIVE)))
            )
            return session.exec(query).first() is not None

    def _end_of(self, request_id: int) -> datetime:
        request = self._require(request_id)
        assert request.ends_at is not None
        return request.ends_at

    def _still_needed(self, grant: Grant) -> bool:
        """Whether another live request shares this grant's rule."""
        with self.store.session() as session:
            query = (
                select(Grant)
                .join(AccessRequest, col(Grant.request_id) == col(AccessRequest.id))
                .where(Grant.state == GrantState.PRESENT)
                .where(Grant.rule_name == grant.rule_name)
                .where(Grant.id != grant.id)
                .where(col(AccessRequest.status).in_((RequestStatus.OPENING, RequestStatus.ACTIVE)))
            )
            return any(g.nsg_id.lower() == grant.nsg_id.lower() for g in session.exec(query))

    def _record_intent(
        self,
        request_id: int,
        resource_id: str,
        name: str,
        priority: int,
        body: dict[str, Any],
        baseline: list[dict[str, Any]],
        kind: str = "nsg",
    ) -> Grant:
        """Store the rule about to be written (and its audit line) before writing it."""
        now = self.clock()
        grant = Grant(
            request_id=request_id,
            nsg_id=resource_id,
            rule_name=name,
            priority=priority,
            kind=kind,
            state=GrantState.CREATING,
            rule=body,
            baseline=baseline,
            created_at=now,
            updated_at=now,
        )
        with self.store.session() as session:
            session.add(grant)
            session.add(
                AuditEvent(
                    at=now,
                    request_id=request_id,
                    actor=SYSTEM_ACTOR,
                    action="rule_intended",
                    detail={"resource": resource_id, "rule": name, "change": "create"},
                )
            )
            session.commit()
            session.refresh(grant)
        return grant

    def _settle_failed_create(self, grant: Grant, error: CloudError) -> None:
        """After a failed PUT, find out whether the rule exists anyway, and record it."""
        try:
            present = self.cloud.get_rule(grant.nsg_id, grant.rule_name) is not None
        except CloudError:
            present = True  # unknown: keep it as present so that closing removes it
        state = GrantState.PRESENT if present else GrantState.REMOVED
        self._set_grant(grant, state, last_error=error.message)
        self.store.audit(
            "rule_create_failed",
            SYSTEM_ACTOR,
            grant.request_id,
            nsg=grant.nsg_id,
            rule=grant.rule_name,
            code=error.code,
            left_present=present,
        )

    def _activate(self, request_id: int) -> None:
        current = self._require(request_id)
        assert current.ends_at is not None
        if not self.store.transition(
            request_id,
            (RequestStatus.OPENING,),
            RequestStatus.ACTIVE,
            notify=("request_granted", {}),
            audit=("opened", SYSTEM_ACTOR, {"ends_at": current.ends_at.isoformat()}),
            opened_at=self.clock(),
        ):
            return
        request = self._require(request_id)
        log.info("request %s active until %s", request_id, request.ends_at)
        self.observer.request_event("opened", request)
        if self.on_active is not None:
            self.on_active(request)
        self.deliver(request_id)

    def _fail(self, request: AccessRequest, reason: str) -> None:
        """Undo whatever was created for a request that could not be opened, then mark it."""
        assert request.id is not None
        log.warning("request %s failed: %s", request.id, reason)
        self.store.audit("failed", SYSTEM_ACTOR, request.id, reason=reason)
        remaining = self._remove_rules(request.id)
        self.store.transition(
            request.id,
            (RequestStatus.OPENING, RequestStatus.APPROVED),
            RequestStatus.FAILED,
            notify=("request_failed", {"reason": reason}),
            failure_reason=reason,
            closed_at=self.clock() if not remaining else None,
        )
        self.observer.request_event("failed", request)
        self.deliver(request.id)

    # -- extending ---------------------------------------------------------------------

    def authorize_extension(self, request: AccessRequest, actor_id: str) -> None:
        """Raise NotAuthorized unless ``actor_id`` is the requester or an approver."""
        if actor_id != request.requester_id and actor_id not in self.approvers_of(request):
            raise NotAuthorized(f"there is no request #{request.id} that you requested or approve")

    def extension_limit(self, request: AccessRequest) -> datetime:
        """The latest end the policy allows: when access opened plus the shortest maximum
        duration of the request's ports."""
        policy = self.policies.by_name(request.policy_name)
        if is_defender(policy):
            raise RequestRejected(
                f"request #{request.id} is open through Defender for Cloud, which cannot "
                "extend a JIT request; make a new request before it ends"
            )
        rules = [policy.port_rule(p) for p in request.port_list] if policy else []
        maximums = [rule.max_duration for rule in rules if rule is not None]
        if request.opened_at is None or not maximums or len(maximums) != len(rules):
            raise RequestRejected(
                f"the policy no longer covers the ports of request #{request.id}; "
                "make a new request"
            )
        return request.opened_at + min(maximums)

    def extension_step(self, request: AccessRequest, step: timedelta) -> timedelta | None:
        """How much later ``step`` can move the end within the policy's limit, or None
        when there is no room left (the Extend button's label)."""
        if request.ends_at is None:
            return None
        try:
            limit = self.extension_limit(request)
        except RequestRejected:
            return None
        room = min(request.ends_at + step, limit) - request.ends_at
        return room if room > timedelta(0) else None

    def extend(self, request_id: int, actor_id: str, duration: timedelta) -> AccessRequest:
        """Keep an active request open until now + ``duration`` (``/jit extend``).

        The requester or an approver may extend, within the policy's maximum counted from
        when access opened. The new end and the rules' new descriptions are stored first
        (a compare-and-set on the row, with the audit line and the notice); then each
        allow rule of jitbot's is written again with the new end in its description, and
        the expiry is rescheduled.
        """
        return self._extend(request_id, actor_id, lambda _request: self.clock() + duration)

    def extend_by_step(
        self,
        request_id: int,
        actor_id: str,
        step: timedelta,
        warned_end: datetime | None = None,
    ) -> AccessRequest:
        """Move the end ``step`` later, capped at the policy's limit (the Extend button).

        With ``warned_end`` (the end the button was offered for), the new end is
        ``warned_end + step``: clicking the same button twice, or after the end was moved
        by other means, raises AlreadyExtended instead of adding the step again.
        """

        def target(request: AccessRequest) -> datetime:
            assert request.ends_at is not None and request.id is not None
            base = request.ends_at if warned_end is None else warned_end
            limit = self.extension_limit(request)
            wanted = min(base + step, limit)
            if warned_end is not None and request.ends_at >= wanted:
                raise AlreadyExtended(request.id, request.ends_at)
            if request.ends_at >= limit:
                raise ExtensionTooLong(request.id, limit, timedelta(0))
            return wanted

        return self._extend(request_id, actor_id, target)

    def _extend(
        self, request_id: int, actor_id: str, target: Callable[[AccessRequest], datetime]
    ) -> AccessRequest:
        request = self._require(request_id)
        try:
            self.authorize_extension(request, actor_id)
            self._check_extension(request, target)
        except JitError as exc:
            self.store.audit("extend_refused", actor_id, request_id, reason=exc.message)
            raise
        for _ in range(EXTEND_LEASE_TRIES):
            with self._exclusive(request_id) as mine:
                if mine:
                    new_end = self._apply_extension(request_id, actor_id, target)
                    break
            time.sleep(EXTEND_LEASE_WAIT)
        else:
            raise StateConflict(
                f"request #{request_id} is being changed right now; try again in a moment",
                request.status,
            )
        extended = self._require(request_id)
        log.info("request %s extended by %s until %s", request_id, actor_id, new_end)
        if self.on_active is not None:
            self.on_active(extended)
        self.deliver(request_id)
        return extended

    def _apply_extension(
        self, request_id: int, actor_id: str, target: Callable[[AccessRequest], datetime]
    ) -> datetime:
        """Under the request's lease: check again against the row as it is now, then
        store the extension and rewrite the rules."""
        request = self._require(request_id)
        new_end = self._check_extension(request, target)
        writes = self._record_extension(request, new_end, actor_id)
        self._rewrite_rules(request_id, writes)
        return new_end

    def _check_extension(
        self, request: AccessRequest, target: Callable[[AccessRequest], datetime]
    ) -> datetime:
        """The new end, or the reason there is none."""
        now = self.clock()
        if request.status != RequestStatus.ACTIVE or request.ends_at is None:
            raise StateConflict(
                f"request #{request.id} is {request.status}; only active access can be extended",
                request.status,
            )
        if request.ends_at <= now:
            raise StateConflict(f"request #{request.id} is ending now", request.status)
        assert request.id is not None
        new_end = target(request)
        limit = self.extension_limit(request)
        if new_end > limit:
            raise ExtensionTooLong(request.id, limit, max(limit - now, timedelta(0)))
        if new_end <= request.ends_at:
            raise RequestRejected(
                f"request #{request.id} is already open until "
                f"{request.ends_at:%Y-%m-%d %H:%M:%S} UTC, later than that; "
                f"`/jit revoke {request.id}` ends it early"
            )
        return new_end

    def _record_extension(
        self, request: AccessRequest, new_end: datetime, actor_id: str
    ) -> list[tuple[str, str, dict[str, Any]]]:
        """Store the new end (if the row is unchanged since read) with the rules' new
        descriptions, the audit line and the notice; return the rule writes to make."""
        assert request.id is not None and request.ends_at is not None
        rows, writes = self._redescribed(request, new_end)
        now = self.clock()
        statement = (
            update(AccessRequest)
            .where(col(AccessRequest.id) == request.id)
            .where(col(AccessRequest.status) == RequestStatus.ACTIVE)
            .where(col(AccessRequest.row_version) == request.row_version)
            .values(ends_at=new_end, row_version=AccessRequest.row_version + 1)
        )
        ends = {"previous_end": request.ends_at.isoformat(), "ends_at": new_end.isoformat()}
        with self.store.session() as session:
            if session.execute(statement).rowcount != 1:  # type: ignore[attr-defined]
                session.rollback()
                current = self._require(request.id)
                raise StateConflict(
                    f"request #{request.id} changed meanwhile (now {current.status}); try again",
                    current.status,
                )
            for grant_id, rule in rows:
                row = session.get(Grant, grant_id)
                if row is not None:
                    row.rule = rule
                    row.updated_at = now
                    session.add(row)
            session.add(
                self.store.notification(request.id, "request_extended", {"by": actor_id, **ends})
            )
            session.add(
                AuditEvent(
                    at=now, request_id=request.id, actor=actor_id, action="extended", detail=ends
                )
            )
            session.commit()
        return writes

    def _redescribed(
        self, request: AccessRequest, new_end: datetime
    ) -> tuple[list[tuple[int, dict[str, Any]]], list[tuple[str, str, dict[str, Any]]]]:
        """jitbot's allow rules of a request with the new end in their description: the
        grant rows to update (every live grant sharing a rule) and the rules to write.

        A shared rule keeps the id of the request that created it, and the latest end of
        the live requests sharing it.
        """
        rows: list[tuple[int, dict[str, Any]]] = []
        writes: list[tuple[str, str, dict[str, Any]]] = []
        assert request.id is not None
        for grant in self.grants_of(request.id):
            if grant.kind != "nsg" or grant.state != GrantState.PRESENT:
                continue
            if not grant.rule_name.lower().startswith(ALLOW_PREFIX):
                continue
            sharers = self._sharers(grant)
            end = max([new_end, *(r.ends_at for _, r in sharers if r.ends_at is not None)])
            parsed = parse_allow_description(str(grant.rule.get("description", "")))
            owner = parsed[0] if parsed else request.id
            spec = AllowSpec(owner, request.vm_name, "", "", (), request.protocol, end)
            rule = {**grant.rule, "description": rule_description(spec)}
            owners = [grant, *(g for g, _ in sharers)]
            rows.extend((g.id, rule) for g in owners if g.id is not None)
            writes.append((grant.nsg_id, grant.rule_name, rule))
        return rows, writes

    def _sharers(self, grant: Grant) -> list[tuple[Grant, AccessRequest]]:
        """Other live requests' grants on the same rule in the same NSG."""
        with self.store.session() as session:
            query = (
                select(Grant, AccessRequest)
                .join(AccessRequest, col(Grant.request_id) == col(AccessRequest.id))
                .where(Grant.state == GrantState.PRESENT)
                .where(Grant.rule_name == grant.rule_name)
                .where(Grant.id != grant.id)
                .where(col(AccessRequest.status).in_((RequestStatus.OPENING, RequestStatus.ACTIVE)))
            )
            return [
                (g, r) for g, r in session.exec(query) if g.nsg_id.lower() == grant.nsg_id.lower()
            ]

    def _rewrite_rules(
        self, request_id: int, writes: list[tuple[str, str, dict[str, Any]]]
    ) -> None:
        """Write jitbot's rules again with their new description.

        A failure leaves the rule with its old description, which the database no longer
        matches; reconcile writes it again from the database, so it is logged, not raised.
        """
        for nsg_id, name, rule in writes:
            try:
                with self.cloud.lock_for(nsg_id):
                    self.cloud.create_rule(nsg_id, name, rule)
            except CloudError as exc:
                log.warning(
                    "request %s: could not update the description of %s in %s (%s); "
                    "reconcile writes it again",
                    request_id,
                    name,
                    nsg_id,
                    exc.code,
                )
                self.store.audit(
                    "rule_update_failed",
                    SYSTEM_ACTOR,
                    request_id,
                    nsg=nsg_id,
                    rule=name,
                    code=exc.code,
                )
                continue
            self.store.audit("rule_updated", SYSTEM_ACTOR, request_id, nsg=nsg_id, rule=name)

    # -- warning before the end --------------------------------------------------------

    def warn_expiring(self, lead: timedelta) -> int:
        """Queue an "expiring soon" notice for each active request ending within ``lead``.

        Once per end: a ``request_expiring`` notice naming the current end means warned,
        so an extended request is warned again before its new end. Grants no longer than
        ``lead`` are not warned (the grant message already said when they end). Returns
        how many warnings were queued.
        """
        now = self.clock()
        queued = 0
        for request in self.store.requests_with_status(
            (RequestStatus.ACTIVE,), ends_before=now + lead
        ):
            assert request.id is not None
            if request.ends_at is None or request.opened_at is None or request.ends_at <= now:
                continue
            if request.ends_at - request.opened_at <= lead:
                continue
            with self._exclusive(request.id) as mine:
                if not (mine and self._queue_warning(request.id)):
                    continue
            queued += 1
            self.deliver(request.id)
        return queued

    def _queue_warning(self, request_id: int) -> bool:
        """Under the request's lease, so that of several replicas one warns."""
        request = self._require(request_id)
        if request.status != RequestStatus.ACTIVE or request.ends_at is None:
            return False
        ends_at = request.ends_at.isoformat()
        for note in self.store.notifications(request_id):
            if note.event == "request_expiring" and note.args.get("ends_at") == ends_at:
                return False
        room = self.extension_step(request, EXTEND_BUTTON_STEP)
        args: dict[str, Any] = {
            "ends_at": ends_at,
            "extend_by_seconds": room.total_seconds() if room else 0.0,
        }
        if is_defender(self.policies.by_name(request.policy_name)):
            args["not_extendable"] = "defender"
        with self.store.session() as session:
            session.add(self.store.notification(request_id, "request_expiring", args))
            session.add(
                AuditEvent(
                    at=self.clock(),
                    request_id=request_id,
                    actor=SYSTEM_ACTOR,
                    action="expiry_warned",
                    detail=args,
                )
            )
            session.commit()
        log.info("request %s: warned that it ends at %s", request_id, ends_at)
        return True

    # -- closing -----------------------------------------------------------------------

    def expire(self, request_id: int) -> bool:
        """Close an active request whose end has come. True if it is now closed."""
        request = self.store.get_request(request_id)
        if request is None or request.ends_at is None:
            return False
        early = (request.ends_at - self.clock()).total_seconds()
        if early > EXPIRY_EARLY_TOLERANCE:
            return False
        if early > 0:
            time.sleep(early)
        return self._close(request_id, RequestStatus.CLOSED, "expired", SYSTEM_ACTOR)

    def revoke(self, request_id: int, actor_id: str) -> bool:
        closed = self._close(request_id, RequestStatus.REVOKED, "revoked", actor_id)
        if not closed and self.defender is not None and self.is_defender_request(request_id):
            request = self._require(request_id)
            if request.status == RequestStatus.CLOSING and request.end_reason == "revoked":
                self.defender.note_early_end(request_id, actor_id)
        return closed

    def is_defender_request(self, request_id: int) -> bool:
        request = self._require(request_id)
        return is_defender(self.policies.by_name(request.policy_name)) or any(
            g.kind == DEFENDER_GRANT for g in self.grants_of(request_id)
        )

    def _close(self, request_id: int, final: str, reason: str, actor: str) -> bool:
        """Close a request: first record that it is closing (a compare-and-set that needs
        no lease, so a revoke or an expiry is never lost to a busy worker), then remove
        its rules under the lease. If the lease stays taken, whoever holds it or the next
        sweep finishes the closing."""
        self.store.transition(
            request_id,
            (RequestStatus.ACTIVE,),
            RequestStatus.CLOSING,
            audit=("closing", actor, {"reason": reason}),
            end_reason=reason,
        )
        with self._exclusive_waiting(request_id) as mine:
            if not mine:
                return False
            request = self._require(request_id)
            if request.status != RequestStatus.CLOSING:
                return False
            final = RequestStatus.REVOKED if request.end_reason == "revoked" else final
            remaining = self._remove_rules(request_id)
            if remaining:
                if self.defender is not None and self.defender.grant_of(request_id) is not None:
                    log.debug("request %s: waiting for Defender for Cloud to close it", request_id)
                else:
                    log.warning(
                        "request %s: %d rule(s) could not be removed yet; the sweep retries",
                        request_id,
                        remaining,
                    )
                return False
            report = self._restore_report(request_id)
            detail = {"reason": request.end_reason, **report.to_json()}
            notice = ("request_closed", report.to_json())
            if self.defender is not None and self.defender.grant_of(request_id) is not None:
                notice = ("defender_closed", self.defender.closed_notice(request_id))
                detail.update(notice[1])
            if not self.store.transition(
                request_id,
                (RequestStatus.CLOSING,),
                final,
                notify=notice,
                audit=("closed", SYSTEM_ACTOR, detail),
                closed_at=self.clock(),
            ):
                return False
            log.info("request %s %s; rules restored=%s", request_id, final, report.restored)
            self.observer.request_event(final, request)
            self.deliver(request_id)
            return True

    def _remove_rules(self, request_id: int) -> int:
        """Remove every rule of the request still (possibly) in place; return how many remain."""
        remaining = 0
        for grant in self.grants_of(request_id):
            if grant.state == GrantState.REMOVED:
                continue
            if grant.kind == DEFENDER_GRANT:
                remaining += 0 if self._defender_closed(grant) else 1
                continue
            try:
                self._remove_rule(grant)
            except CloudError as exc:
                remaining += 1
                self._set_grant(grant, grant.state, last_error=exc.message)
                self.store.audit(
                    "rule_remove_failed",
                    SYSTEM_ACTOR,
                    request_id,
                    nsg=grant.nsg_id,
                    rule=grant.rule_name,
                    code=exc.code,
                )
        return remaining

    def _defender_closed(self, grant: Grant) -> bool:
        """Whether Defender reports the grant's ports closed; Defender closes them at the
        end time by itself, and jitbot waits for its word."""
        if self.defender is None:
            return False
        try:
            return self.defender.closed_in_defender(grant)
        except CloudError as exc:
            self._set_grant(grant, grant.state, last_error=exc.message)
            return False

    def _remove_rule(self, grant: Grant) -> None:
        if grant.kind == "dnat":
            self._remove_dnat(grant)
            return
        with self.cloud.lock_for(grant.nsg_id):
            if self._still_needed(grant):
                self._set_grant(grant, GrantState.REMOVED)
                self.store.audit(
                    "rule_kept_shared",
                    SYSTEM_ACTOR,
                    grant.request_id,
                    nsg=grant.nsg_id,
                    rule=grant.rule_name,
                )
                return
            current = self.cloud.get_rule(grant.nsg_id, grant.rule_name)
            where = {"nsg": grant.nsg_id, "rule": grant.rule_name}
            if current is None:
                self._set_grant(grant, GrantState.REMOVED, audit=("rule_already_gone", where))
                return
            intent = ("rule_intended", {**where, "change": "delete"})
            self._set_grant(grant, GrantState.REMOVING, audit=intent)
            self.cloud.delete_rule(grant.nsg_id, grant.rule_name)
            self._set_grant(grant, GrantState.REMOVED, audit=("rule_removed", where))
            log.info(
                "request %s: rule %s removed from %s",
                grant.request_id,
                grant.rule_name,
                grant.nsg_id,
            )

    def _remove_dnat(self, grant: Grant) -> None:
        if self.firewalls is None:
            raise CloudError(f"no firewall is configured to remove {grant.rule_name} from")
        intent = {"resource": grant.nsg_id, "rule": grant.rule_name, "change": "delete"}
        self._set_grant(grant, GrantState.REMOVING, audit=("rule_intended", intent))
        removed = self.firewalls.remove_dnat(grant.nsg_id, grant.rule_name)
        outcome = "rule_removed" if removed else "rule_already_gone"
        where = {"firewall": grant.nsg_id, "rule": grant.rule_name}
        self._set_grant(grant, GrantState.REMOVED, audit=(outcome, where))

    def _restore_report(self, request_id: int) -> RestoreReport:
        """Compare each NSG with its snapshot from before the request's first rule.

        Allow rules of other grants come and go on their own schedule, so they are left
        out of the comparison; this request's own rules must be gone, unless another live
        grant still shares them.
        """
        grants = [g for g in self.grants_of(request_id) if g.kind == "nsg"]
        changes: list[str] = self._firewall_leftovers(request_id)
        first_by_nsg: dict[str, Grant] = {}
        for grant in grants:
            first_by_nsg.setdefault(grant.nsg_id.lower(), grant)
        for grant in first_by_nsg.values():
            try:
                now = self.cloud.custom_rules(grant.nsg_id)
            except CloudError as exc:
                changes.append(f"{_short(grant.nsg_id)}: could not re-read ({exc.code})")
                continue
            mine = {g.rule_name.lower() for g in grants if g.nsg_id.lower() == grant.nsg_id.lower()}
            left = [r["name"] for r in now if r["name"].lower() in mine and not self._shared(r)]
            changes.extend(f"{_short(grant.nsg_id)}: {name} is still present" for name in left)
            before = [r for r in grant.baseline if not _is_allow_rule(r)]
            after = [r for r in now if not _is_allow_rule(r)]
            changes.extend(f"{_short(grant.nsg_id)}: {d}" for d in differences(before, after))
        return RestoreReport(
            restored=not changes,
            nsgs=tuple(_short(g.nsg_id) for g in first_by_nsg.values()),
            changes_by_others=tuple(changes),
        )

    # -- the sweep and recovery --------------------------------------------------------

    def sweep(self) -> None:
        """Catch up on everything due: opens never started or interrupted, ends passed,
        closings unfinished, pendings too old.

        The scheduler fires each expiry at its time; the sweep is the safety net for a
        job lost to a restart or a failure. It also delivers notifications that could not
        be sent before.
        """
        now = self.clock()
        for request in self.store.requests_with_status((RequestStatus.APPROVED,)):
            self._guarded(self.open, request.id)
        for request in self.store.requests_with_status((RequestStatus.OPENING,)):
            self._guarded(self._undo_interrupted_open, request.id)
        if self.defender is not None:
            for request in self.store.requests_with_status((RequestStatus.ACTIVE,)):
                if request.ends_at is not None and request.ends_at > now:
                    self._guarded(self._follow_defender_active, request.id)
        for request in self.store.requests_with_status((RequestStatus.ACTIVE,), ends_before=now):
            self._guarded(self.expire, request.id)
        for request in self.store.requests_with_status((RequestStatus.CLOSING,)):
            self._guarded(self._continue_closing, request.id)
        for request in self.store.requests_with_status((RequestStatus.PENDING,)):
            if self._auto_approval_left(request, now):
                self._guarded(self._auto_approve, request.id)
            if request.created_at and request.created_at + self._pending_timeout(request) <= now:
                self._guarded(self._expire_pending, request.id)
            elif self._reminder_due(request, now):
                self._guarded(self._remind, request.id)
        try:
            self.deliver()
        except Exception:
            log.exception("sweep: delivering notifications failed; retrying next sweep")
        try:
            self.store.forget_signatures(now - timedelta(minutes=10))
        except Exception:
            log.exception("sweep: forgetting old request signatures failed")

    def recover(self) -> None:
        """At start: finish or undo what a previous process left half done (the sweep does
        it; a request still leased by a live replica is left to that replica)."""
        self.sweep()

    def _follow_defender_active(self, request_id: int) -> None:
        """Close an active Defender request that Defender already closed (superseded by a
        newer request, or ended in Defender); closing takes the request's lease itself."""
        if self.defender is None or not self.is_defender_request(request_id):
            return
        self.defender.follow_active(request_id)

    def _undo_interrupted_open(self, request_id: int) -> None:
        if self.defender is not None and self.is_defender_request(request_id):
            with self._exclusive(request_id) as mine:
                if mine and self._require(request_id).status == RequestStatus.OPENING:
                    self.defender.follow_opening(request_id)
            return
        with self._exclusive(request_id) as mine:
            if mine and self._require(request_id).status == RequestStatus.OPENING:
                log.warning("request %s was interrupted while opening; undoing it", request_id)
                self._fail(
                    self._require(request_id),
                    "jitbot restarted while opening access; nothing was left open, ask again",
                )

    def _continue_closing(self, request_id: int) -> None:
        request = self._require(request_id)
        final = RequestStatus.REVOKED if request.end_reason == "revoked" else RequestStatus.CLOSED
        self._close(request_id, final, request.end_reason or "expired", SYSTEM_ACTOR)

    def _expire_pending(self, request_id: int) -> None:
        if self.store.transition(
            request_id,
            (RequestStatus.PENDING,),
            RequestStatus.EXPIRED,
            notify=("request_expired_unapproved", {}),
            audit=("expired_unapproved", SYSTEM_ACTOR, {}),
            closed_at=self.clock(),
        ):
            self.observer.request_event("expired", self._require(request_id))
            self.deliver(request_id)

    def _auto_approval_left(self, request: AccessRequest, now: datetime) -> bool:
        """A request whose auto-approval was interrupted (a crash right after it was
        stored); the submitting worker has had a minute to finish it itself."""
        policy = self.policies.by_name(request.policy_name)
        if policy is None or not policy.auto_approve or request.id is None:
            return False
        if request.created_at is None or now - request.created_at < timedelta(minutes=1):
            return False
        return any(a.kind == "auto" for a in self.store.approvals(request.id))

    def _pending_timeout(self, request: AccessRequest) -> timedelta:
        """How long ``request`` may wait for a decision: its policy's ``pending_timeout``,
        else the deployment's."""
        policy = self.policies.by_name(request.policy_name)
        if policy is not None and policy.pending_timeout is not None:
            return policy.pending_timeout
        return self.pending_timeout

    def _reminder_due(self, request: AccessRequest, now: datetime) -> bool:
        policy = self.policies.by_name(request.policy_name)
        if policy is None or policy.remind_after is None or request.reminded_at is not None:
            return False
        return request.created_at is not None and request.created_at + policy.remind_after <= now

    def _remind(self, request_id: int) -> None:
        """Remind a pending request's approvers, once, in its approval thread."""
        request = self._require(request_id)
        policy = self.policies.by_name(request.policy_name)
        if policy is None or request.created_at is None:
            return
        expires_at = request.created_at + self._pending_timeout(request)
        args = {"approvers": list(policy.approvers), "expires_at": expires_at.isoformat()}
        if self.store.mark_reminded(request_id, self.clock(), ("request_reminded", args)):
            log.info("request %s: approvers reminded", request_id)
            self.deliver(request_id)

    def _guarded(self, action: Callable[[int], Any], request_id: int | None) -> None:
        assert request_id is not None
        try:
            action(request_id)
        except Exception:
            log.exception("sweep: handling request %s failed; retrying next sweep", request_id)

    # -- helpers -----------------------------------------------------------------------

    def grants_of(self, request_id: int) -> list[Grant]:
        with self.store.session() as session:
            query = select(Grant).where(Grant.request_id == request_id).order_by(col(Grant.id))
            return list(session.exec(query))

    def requests_of(self, requester_id: str, statuses: tuple[str, ...]) -> list[AccessRequest]:
        with self.store.session() as session:
            query = (
                select(AccessRequest)
                .where(AccessRequest.requester_id == requester_id)
                .where(col(AccessRequest.status).in_(statuses))
                .order_by(col(AccessRequest.id))
            )
            return list(session.exec(query))

    def requests_on(self, vm_name: str, statuses: tuple[str, ...]) -> list[AccessRequest]:
        """Requests of anyone for one VM (its name compared case-insensitively)."""
        wanted = vm_name.lower()
        return [r for r in self.store.requests_with_status(statuses) if r.vm_name.lower() == wanted]

    def policy_for(self, vm: str) -> Policy:
        return find_policy(self.policies.policies, vm)

    def _set_grant(
        self,
        grant: Grant,
        state: str,
        last_error: str | None = None,
        audit: tuple[str, dict[str, Any]] | None = None,
        rule: dict[str, Any] | None = None,
    ) -> None:
        """Move a grant to ``state`` (and store its ``rule`` when given); ``audit``
        (action, detail) is written in the same transaction, so the log holds exactly the
        steps that were recorded."""
        now = self.clock()
        with self.store.session() as session:
            row = session.get(Grant, grant.id)
            assert row is not None
            row.state = state
            row.updated_at = now
            if last_error is not None:
                row.last_error = last_error
            if rule is not None:
                row.rule = rule
            session.add(row)
            if audit is not None:
                action, detail = audit
                session.add(
                    AuditEvent(
                        at=now,
                        request_id=grant.request_id,
                        actor=SYSTEM_ACTOR,
                        action=action,
                        detail=detail,
                    )
                )
            session.commit()
        grant.state = state
        if rule is not None:
            grant.rule = rule

    def _require(self, request_id: int) -> AccessRequest:
        request = self.store.get_request(request_id)
        if request is None:
            raise StateConflict(f"there is no request #{request_id}", "missing")
        return request

    @contextmanager
    def _exclusive_waiting(self, request_id: int, wait: float = 5.0) -> Iterator[bool]:
        """Like :meth:`_exclusive`, but wait a few seconds for a worker that is finishing."""
        deadline = time.monotonic() + wait
        while True:
            with self._exclusive(request_id) as mine:
                if mine or time.monotonic() >= deadline:
                    yield mine
                    return
            time.sleep(0.1)

    @contextmanager
    def _exclusive(self, request_id: int) -> Iterator[bool]:
        """Let one worker work on a request at a time, across threads and replicas.

        Within the process a set of busy ids answers at once; across processes a lease in
        the request's row does, expiring after ``lease_seconds`` if its holder dies.

        The id always leaves the busy set, even when the lease cannot be released (the
        database went away mid-work): a lease left in the row runs out by itself and this
        worker may take its own lease again, but an id stuck in the set would keep every
        later expiry and sweep of this process away from the request for good.
        """
        with self._busy_guard:
            mine = request_id not in self._busy
            if mine:
                self._busy.add(request_id)
        leased = False
        try:
            if mine:
                now = self.clock()
                leased = self.store.take_lease(
                    request_id, self.worker_id, now, now + timedelta(seconds=self.lease_seconds)
                )
            yield mine and leased
        finally:
            try:
                if leased:
                    self.store.release_lease(request_id, self.worker_id)
            finally:
                if mine:
                    with self._busy_guard:
                        self._busy.discard(request_id)


def _is_allow_rule(rule: dict[str, Any]) -> bool:
    return str(rule.get("name", "")).lower().startswith(ALLOW_PREFIX)


def _short(resource_id: str) -> str:
    return resource_id.rstrip("/").rsplit("/", 1)[-1]
