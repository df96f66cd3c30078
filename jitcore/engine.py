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

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlmodel import col, select

from jitcore.azure.inventory import VmNetwork
from jitcore.db import Store
from jitcore.errors import CloudError, JitError, NotAuthorized, PlacementError, StateConflict
from jitcore.model import AccessRequest, Grant, GrantState, RequestStatus, utcnow
from jitcore.notify import Notifier, RestoreReport
from jitcore.planner import (
    ALLOW_PREFIX,
    AllowSpec,
    Rule,
    differences,
    plan_allow,
    rule_description,
)
from jitcore.policy import CheckedRequest, Policy, check_request, find_policy

log = logging.getLogger(__name__)

SYSTEM_ACTOR = "jitbot"
EXPIRY_EARLY_TOLERANCE = 2.0
"""Seconds an expiry job may fire before the end; it then waits rather than skipping."""
LIVE_STATUSES = (RequestStatus.OPENING, RequestStatus.ACTIVE, RequestStatus.CLOSING)
PRIORITY_CONFLICT_CODES = frozenset({"SecurityRuleConflict", "SecurityRuleParameterConflict"})


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

    def by_name(self, name: str) -> Policy | None:
        return next((p for p in self.policies if p.name == name), None)


class Engine:
    def __init__(
        self,
        store: Store,
        policies: PolicySet,
        cloud: NetworkCloud,
        notifier: Notifier,
        on_active: Callable[[AccessRequest], None] | None = None,
        clock: Callable[[], datetime] = utcnow,
        pending_timeout: timedelta = timedelta(hours=1),
    ) -> None:
        self.store = store
        self.policies = policies
        self.cloud = cloud
        self.notifier = notifier
        self.on_active = on_active
        self.clock = clock
        self.pending_timeout = pending_timeout
        self._busy: set[int] = set()
        self._busy_guard = threading.Lock()

    # -- requesting and deciding -------------------------------------------------------

    def check(self, vm: str, ports: list[int], duration: timedelta, source: str) -> CheckedRequest:
        """Validate a request against the policy without recording anything."""
        return check_request(self.policies.policies, vm, ports, duration, source)

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
        checked = self.check(vm, ports, duration, source)
        request = AccessRequest(
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
        )
        with self.store.session() as session:
            session.add(request)
            session.commit()
            session.refresh(request)
        assert request.id is not None
        self.store.audit(
            "requested",
            requester_id,
            request.id,
            vm=request.vm_name,
            ports=request.ports,
            source=request.source_prefix,
            duration_seconds=request.duration_seconds,
            reason=reason,
            policy=f"{request.policy_name}@{request.policy_version}",
        )
        log.info("request %s submitted by %s for %s", request.id, requester_id, request.vm_name)
        return request

    def announce(self, request_id: int) -> None:
        """Post the request to its approvers and remember where, for later updates."""
        request = self._require(request_id)
        posted = self._notify("request_submitted", request)
        if posted is not None:
            self.store.update_request(
                request_id, approval_channel=posted.channel, approval_ts=posted.ts
            )

    def approvers_of(self, request: AccessRequest) -> list[str]:
        policy = self.policies.by_name(request.policy_name)
        return list(policy.approvers) if policy else []

    def authorize_decision(self, request: AccessRequest, actor_id: str) -> None:
        """Raise NotAuthorized unless ``actor_id`` may decide ``request`` right now."""
        if actor_id == request.requester_id:
            raise NotAuthorized("you cannot approve or deny your own request")
        approvers = self.approvers_of(request)
        if actor_id not in approvers:
            raise NotAuthorized(
                f"only the approvers of policy {request.policy_name} can decide this request"
            )

    def approve(self, request_id: int, approver_id: str) -> AccessRequest:
        """Approve a pending request and open access. Raises NotAuthorized or StateConflict."""
        request = self._require(request_id)
        try:
            self.authorize_decision(request, approver_id)
        except NotAuthorized as exc:
            self.store.audit("decision_refused", approver_id, request_id, reason=exc.message)
            raise
        decided = self.store.transition(
            request_id,
            (RequestStatus.PENDING,),
            RequestStatus.APPROVED,
            decided_at=self.clock(),
            decided_by=approver_id,
        )
        if not decided:
            current = self._require(request_id)
            self.store.audit(
                "decision_refused", approver_id, request_id, reason=f"already {current.status}"
            )
            raise StateConflict(
                f"request #{request_id} was already {current.status}",
                current.status,
                current.decided_by,
            )
        self.store.audit("approved", approver_id, request_id)
        log.info("request %s approved by %s", request_id, approver_id)
        approved = self._require(request_id)
        self._notify("request_approved", approved)
        self.open(request_id)
        return self._require(request_id)

    def deny(self, request_id: int, approver_id: str, note: str = "") -> AccessRequest:
        request = self._require(request_id)
        try:
            self.authorize_decision(request, approver_id)
        except NotAuthorized as exc:
            self.store.audit("decision_refused", approver_id, request_id, reason=exc.message)
            raise
        decided = self.store.transition(
            request_id,
            (RequestStatus.PENDING,),
            RequestStatus.DENIED,
            decided_at=self.clock(),
            decided_by=approver_id,
            decision_note=note or None,
        )
        if not decided:
            current = self._require(request_id)
            self.store.audit(
                "decision_refused", approver_id, request_id, reason=f"already {current.status}"
            )
            raise StateConflict(
                f"request #{request_id} was already {current.status}",
                current.status,
                current.decided_by,
            )
        self.store.audit("denied", approver_id, request_id, note=note)
        log.info("request %s denied by %s", request_id, approver_id)
        denied = self._require(request_id)
        self._notify("request_denied", denied)
        return denied

    # -- opening -----------------------------------------------------------------------

    def open(self, request_id: int) -> None:
        """Create the allow rules of an approved request and make it active."""
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
            try:
                network = self.cloud.network_of(request.vm_name)
                if not network.nsg_ids:
                    raise PlacementError(
                        f"{request.vm_name} has no network security group on its NICs or "
                        "subnets, so JIT cannot protect or open it"
                    )
                for nsg_id in network.nsg_ids:
                    self._open_in_nsg(request, network, nsg_id)
            except JitError as exc:
                self._fail(request, exc.message)
                return
            except Exception as exc:  # a bug or an unexpected SDK error: never leave it open
                log.exception("opening request %s failed unexpectedly", request_id)
                self._fail(request, f"unexpected error while opening: {type(exc).__name__}")
                return
            self._activate(request_id)

    def _open_in_nsg(self, request: AccessRequest, network: VmNetwork, nsg_id: str) -> None:
        assert request.id is not None and request.ends_at is not None
        spec = AllowSpec(
            request_id=request.id,
            vm_name=request.vm_name,
            source_prefix=request.source_prefix,
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
                grant = self._record_intent(request.id, nsg_id, rule, baseline)
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
        if properties.get("description") != description:
            wanted = {k: v for k, v in properties.items() if k not in ("provisioningState",)}
            wanted["description"] = description
            self.cloud.create_rule(nsg_id, twin.rule_name, wanted)
        now = self.clock()
        with self.store.session() as session:
            session.add(
                Grant(
                    request_id=request.id,
                    nsg_id=nsg_id,
                    rule_name=twin.rule_name,
                    priority=twin.priority,
                    state=GrantState.PRESENT,
                    rule=twin.rule,
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
        self, request_id: int, nsg_id: str, rule: Rule, baseline: list[dict[str, Any]]
    ) -> Grant:
        now = self.clock()
        grant = Grant(
            request_id=request_id,
            nsg_id=nsg_id,
            rule_name=rule.name,
            priority=rule.priority,
            state=GrantState.CREATING,
            rule=rule.to_arm_properties(),
            baseline=baseline,
            created_at=now,
            updated_at=now,
        )
        with self.store.session() as session:
            session.add(grant)
            session.commit()
            session.refresh(grant)
        self.store.audit(
            "rule_intended", SYSTEM_ACTOR, request_id, nsg=nsg_id, rule=rule.name, change="create"
        )
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
        if not self.store.transition(
            request_id, (RequestStatus.OPENING,), RequestStatus.ACTIVE, opened_at=self.clock()
        ):
            return
        request = self._require(request_id)
        self.store.audit(
            "opened",
            SYSTEM_ACTOR,
            request_id,
            ends_at=request.ends_at.isoformat(),  # type: ignore[union-attr]
        )
        log.info("request %s active until %s", request_id, request.ends_at)
        if self.on_active is not None:
            self.on_active(request)
        self._notify("request_granted", request, self.grants_of(request_id))

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
            failure_reason=reason,
            closed_at=self.clock() if not remaining else None,
        )
        self._notify("request_failed", self._require(request.id), reason)

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
        return self._close(request_id, RequestStatus.REVOKED, "revoked", actor_id)

    def _close(self, request_id: int, final: str, reason: str, actor: str) -> bool:
        with self._exclusive(request_id) as mine:
            if not mine:
                return False
            moved = self.store.transition(
                request_id, (RequestStatus.ACTIVE,), RequestStatus.CLOSING, end_reason=reason
            )
            request = self._require(request_id)
            if not moved and request.status != RequestStatus.CLOSING:
                return False
            if moved:
                self.store.audit("closing", actor, request_id, reason=reason)
            final = RequestStatus.REVOKED if request.end_reason == "revoked" else final
            remaining = self._remove_rules(request_id)
            if remaining:
                log.warning(
                    "request %s: %d rule(s) could not be removed yet; the sweep retries",
                    request_id,
                    remaining,
                )
                return False
            report = self._restore_report(request_id)
            if not self.store.transition(
                request_id, (RequestStatus.CLOSING,), final, closed_at=self.clock()
            ):
                return False
            self.store.audit(
                "closed",
                SYSTEM_ACTOR,
                request_id,
                reason=request.end_reason,
                restored=report.restored,
                changes_by_others=list(report.changes_by_others),
            )
            log.info("request %s %s; rules restored=%s", request_id, final, report.restored)
            self._notify("request_closed", self._require(request_id), report)
            return True

    def _remove_rules(self, request_id: int) -> int:
        """Remove every rule of the request still (possibly) in place; return how many remain."""
        remaining = 0
        for grant in self.grants_of(request_id):
            if grant.state == GrantState.REMOVED:
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

    def _remove_rule(self, grant: Grant) -> None:
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
            if current is None:
                self._set_grant(grant, GrantState.REMOVED)
                self.store.audit(
                    "rule_already_gone",
                    SYSTEM_ACTOR,
                    grant.request_id,
                    nsg=grant.nsg_id,
                    rule=grant.rule_name,
                )
                return
            self._set_grant(grant, GrantState.REMOVING)
            self.store.audit(
                "rule_intended",
                SYSTEM_ACTOR,
                grant.request_id,
                nsg=grant.nsg_id,
                rule=grant.rule_name,
                change="delete",
            )
            self.cloud.delete_rule(grant.nsg_id, grant.rule_name)
            self._set_grant(grant, GrantState.REMOVED)
            self.store.audit(
                "rule_removed",
                SYSTEM_ACTOR,
                grant.request_id,
                nsg=grant.nsg_id,
                rule=grant.rule_name,
            )
            log.info(
                "request %s: rule %s removed from %s",
                grant.request_id,
                grant.rule_name,
                grant.nsg_id,
            )

    def _restore_report(self, request_id: int) -> RestoreReport:
        """Compare each NSG with its snapshot from before the request's first rule.

        Allow rules of other grants come and go on their own schedule, so they are left
        out of the comparison; this request's own rules must be gone, unless another live
        grant still shares them.
        """
        grants = self.grants_of(request_id)
        first_by_nsg: dict[str, Grant] = {}
        for grant in grants:
            first_by_nsg.setdefault(grant.nsg_id.lower(), grant)
        changes: list[str] = []
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
        """Catch up on everything due: ends passed, closings unfinished, pendings too old.

        The scheduler fires each expiry at its time; the sweep is the safety net for a
        job lost to a restart or a failure.
        """
        now = self.clock()
        for request in self.store.requests_with_status((RequestStatus.ACTIVE,), ends_before=now):
            self._guarded(self.expire, request.id)
        for request in self.store.requests_with_status((RequestStatus.CLOSING,)):
            self._guarded(self._continue_closing, request.id)
        for request in self.store.requests_with_status((RequestStatus.PENDING,)):
            if request.created_at and request.created_at + self.pending_timeout <= now:
                self._guarded(self._expire_pending, request.id)

    def recover(self) -> None:
        """At start: finish or undo what a previous process left half done."""
        for request in self.store.requests_with_status((RequestStatus.APPROVED,)):
            log.info("request %s was approved but not opened; opening now", request.id)
            self._guarded(self.open, request.id)
        for request in self.store.requests_with_status((RequestStatus.OPENING,)):
            assert request.id is not None
            log.warning("request %s was interrupted while opening; undoing it", request.id)
            self._guarded(self._undo_interrupted_open, request.id)
        self.sweep()

    def _undo_interrupted_open(self, request_id: int) -> None:
        with self._exclusive(request_id) as mine:
            if mine:
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
            request_id, (RequestStatus.PENDING,), RequestStatus.EXPIRED, closed_at=self.clock()
        ):
            self.store.audit("expired_unapproved", SYSTEM_ACTOR, request_id)
            self._notify("request_expired_unapproved", self._require(request_id))

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

    def policy_for(self, vm: str) -> Policy:
        return find_policy(self.policies.policies, vm)

    def _set_grant(self, grant: Grant, state: str, last_error: str | None = None) -> None:
        with self.store.session() as session:
            row = session.get(Grant, grant.id)
            assert row is not None
            row.state = state
            row.updated_at = self.clock()
            if last_error is not None:
                row.last_error = last_error
            session.add(row)
            session.commit()
        grant.state = state

    def _require(self, request_id: int) -> AccessRequest:
        request = self.store.get_request(request_id)
        if request is None:
            raise StateConflict(f"there is no request #{request_id}", "missing")
        return request

    @contextmanager
    def _exclusive(self, request_id: int) -> Iterator[bool]:
        """Let one thread of this process work on a request at a time; others skip it."""
        with self._busy_guard:
            mine = request_id not in self._busy
            if mine:
                self._busy.add(request_id)
        try:
            yield mine
        finally:
            if mine:
                with self._busy_guard:
                    self._busy.discard(request_id)

    def _notify(self, event: str, *args: Any) -> Any:
        """Call the notifier; a chat failure is logged and audited, never allowed to break
        the cloud side."""
        try:
            return getattr(self.notifier, event)(*args)
        except Exception as exc:
            request = args[0]
            log.exception("notifying %s for request %s failed", event, request.id)
            self.store.audit(
                "notify_failed", SYSTEM_ACTOR, request.id, event=event, error=type(exc).__name__
            )
            return None


def _is_allow_rule(rule: dict[str, Any]) -> bool:
    return str(rule.get("name", "")).lower().startswith(ALLOW_PREFIX)


def _short(resource_id: str) -> str:
    return resource_id.rstrip("/").rsplit("/", 1)[-1]
