"""Access through Defender for Cloud's JIT: the engine's ``enforcement: defender`` path.

jitbot stays the chat front end and the approval step; Defender opens and closes the
ports. For an approved request jitbot

1. brings Defender's JIT policy covering the VM in line with the jitbot policy (a
   read-modify-write that keeps every other VM's entry);
2. stores its intent, a ``grant`` row of kind ``defender`` in ``creating`` with the
   initiate body, and its audit line, then calls initiate with the VM, the ports, the
   end time, the requester's source and a justification naming requester and approver;
3. stores Defender's answer (the request's ``startTimeUtc``) and follows the request in
   the policy's history until Defender reports every port ``Initiated``: only then is
   the requester told that the port is open.

A crash between 2 and 3 leaves the grant in ``creating``; recovery looks the request up
in Defender's history by the ``jitbot request #<id>`` mark of its justification, so it
knows whether the initiate happened.

Defender closes the ports at ``endTimeUtc`` by itself, and api-version 2020-01-01 has no
call to close them earlier. So an early end (``/jit revoke``, End now) is recorded, the
requester is told plainly that Defender keeps the port open until the end time, and the
request is closed when Defender reports it ``Revoked``. jitbot never says a port is
closed before Defender does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from jitcore.azure.defender import VmPlace
from jitcore.db import SYSTEM_ACTOR
from jitcore.defender import (
    DefenderStatus,
    PortState,
    choose_policy,
    entry_matches,
    entry_of,
    explain_error,
    find_request,
    initiate_body,
    justification,
    lost_entries,
    merged_body,
    parse_utc,
    plan_refusal,
    request_marker,
    status_of,
    vm_entry,
)
from jitcore.errors import CloudError, JitError, PlacementError
from jitcore.model import AccessRequest, AuditEvent, Grant, GrantState, RequestStatus
from jitcore.policy import Policy

if TYPE_CHECKING:
    from jitcore.engine import Engine

log = logging.getLogger(__name__)

GRANT_KIND = "defender"
ACTOR = SYSTEM_ACTOR
CONFIRM_SECONDS = 30.0
"""How long opening waits for Defender to report the ports open before leaving the
request to the sweep (which keeps following it)."""
CONFIRM_POLL_SECONDS = 0.5
CLIENT_ERROR_STATUSES = range(400, 500)


class DefenderCloud(Protocol):
    """The Defender operations this path needs; ``jitcore.azure.defender`` provides them."""

    subscription_id: str

    def lock_for(self, resource_group: str, location: str) -> Any: ...

    def locate(self, vm: str) -> VmPlace: ...

    def plan(self, subscription_id: str) -> dict[str, Any] | None: ...

    def policies_in(self, resource_group: str, location: str) -> list[dict[str, Any]]: ...

    def get_policy(
        self, resource_group: str, location: str, name: str
    ) -> dict[str, Any] | None: ...

    def put_policy(
        self, resource_group: str, location: str, name: str, body: dict[str, Any]
    ) -> dict[str, Any]: ...

    def initiate(
        self, resource_group: str, location: str, name: str, body: dict[str, Any]
    ) -> dict[str, Any]: ...


def policy_resource_id(place: VmPlace, name: str) -> str:
    return (
        f"/subscriptions/{place.subscription_id}/resourceGroups/{place.resource_group}"
        f"/providers/Microsoft.Security/locations/{place.location}"
        f"/jitNetworkAccessPolicies/{name}"
    )


class DefenderAccess:
    """The Defender side of the engine. The engine keeps the state machine; this class
    makes and follows the Defender calls for requests whose policy says ``defender``."""

    def __init__(
        self,
        engine: Engine,
        cloud: DefenderCloud,
        confirm_seconds: float = CONFIRM_SECONDS,
        poll_seconds: float = CONFIRM_POLL_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
        settle_seconds: float | None = None,
    ) -> None:
        self.engine = engine
        self.cloud = cloud
        self.settle_seconds = engine.lease_seconds if settle_seconds is None else settle_seconds
        """How long an initiate whose answer was lost may still land in Defender: the
        request's lease time, after which no call of a dead worker is expected."""
        self.confirm_seconds = confirm_seconds
        self.poll_seconds = poll_seconds
        self.sleep = sleep

    # -- the plan check ----------------------------------------------------------------

    def plan_refusals(self, policies: list[Policy]) -> dict[str, str]:
        """Policy name -> why it cannot be in force, for each ``defender`` policy whose
        VMs' subscription lacks Defender for Servers Plan 2 (or whose plan cannot be read)."""
        refusals: dict[str, str] = {}
        checked: dict[str, str | None] = {}
        for policy in policies:
            if policy.enforcement != "defender":
                continue
            for subscription in self._subscriptions_of(policy):
                if subscription not in checked:
                    checked[subscription] = self._plan_refusal(subscription)
                reason = checked[subscription]
                if reason is not None:
                    refusals[policy.name] = reason
                    break
        for name, reason in refusals.items():
            log.warning("policy %s is refused: %s", name, reason)
            self.engine.store.audit("policy_refused", ACTOR, None, policy=name, reason=reason)
        return refusals

    def _subscriptions_of(self, policy: Policy) -> list[str]:
        found = []
        for entry in policy.vms:
            parts = entry.strip("/").split("/")
            subscription = (
                parts[1] if len(parts) > 1 and parts[0].lower() == "subscriptions" else None
            )
            found.append(subscription or self.cloud.subscription_id)
        return list(dict.fromkeys(found))

    def _plan_refusal(self, subscription: str) -> str | None:
        if subscription.lower() != self.cloud.subscription_id.lower():
            return (
                f"its VMs are in subscription {subscription}, but jitbot is configured for "
                f"subscription {self.cloud.subscription_id} only"
            )
        try:
            return plan_refusal(subscription, self.cloud.plan(subscription))
        except CloudError as exc:
            return f"the Defender plan of subscription {subscription} could not be read: {exc}"

    # -- the policy sync ---------------------------------------------------------------

    def sync_all(self, policies: list[Policy], refused: dict[str, str]) -> int:
        """At start: write the Defender JIT policy entry of every VM of each ``defender``
        policy in force, so that Defender (and its portal) protects them before anyone
        asks. A failure is logged and audited; the entry is written again before the
        VM's next request. Returns how many VMs are in line."""
        synced = 0
        for policy in policies:
            if policy.enforcement != "defender" or policy.name in refused:
                continue
            for vm in policy.vms:
                try:
                    self.sync_policy(self.cloud.locate(vm), policy)
                except JitError as exc:
                    log.warning("Defender policy for %s not written: %s", vm, exc.message)
                    self.engine.store.audit(
                        "defender_policy_sync_failed", ACTOR, None, vm=vm, reason=exc.message
                    )
                    continue
                synced += 1
        return synced

    # -- opening -----------------------------------------------------------------------

    def open(self, request: AccessRequest, policy: Policy) -> bool:
        """Sync the Defender policy, initiate, and wait a while for Defender to report
        the ports open. True when they are open (the engine activates the request);
        False when Defender has not confirmed yet (the sweep keeps following). A refusal
        raises a JitError whose message explains it; nothing was opened then."""
        assert request.id is not None and request.ends_at is not None
        place = self.cloud.locate(request.vm_name)
        name = self.sync_policy(place, policy, request.id)
        body = initiate_body(
            place.vm_id,
            request.port_list,
            request.source_prefix,
            request.ends_at,
            justification(
                request.id, request.requester_id, request.decided_by or "", request.reason
            ),
        )
        record = {
            "policy": name,
            "resource_group": place.resource_group,
            "location": place.location,
            "vm_id": place.vm_id,
            "initiate": body,
            "startTimeUtc": None,
        }
        grant = self.engine._record_intent(
            request.id, policy_resource_id(place, name), name, 0, record, [], kind=GRANT_KIND
        )
        self._initiate(grant, place, name, body, request.vm_name)
        return self._wait_open(grant)

    def sync_policy(self, place: VmPlace, policy: Policy, request_id: int | None = None) -> str:
        """Make Defender's JIT policy covering the VM say what the jitbot policy says;
        return its name. Only the VM's own entry changes; other VMs' entries are sent
        back as read and checked to be still there after the write."""
        wanted = vm_entry(
            place.vm_id,
            [(rule.port, rule.protocol, rule.max_duration) for rule in policy.ports],
            policy.allowed_sources,
        )
        with self.cloud.lock_for(place.resource_group, place.location):
            try:
                listed = self.cloud.policies_in(place.resource_group, place.location)
                name, _ = choose_policy(listed, place.vm_id, place.vm_name)
                current = self.cloud.get_policy(place.resource_group, place.location, name)
            except CloudError as exc:
                raise CloudError(explain_error(exc, place.vm_name), exc.code, exc.status) from exc
            if current is not None and entry_matches(entry_of(current, place.vm_id), wanted):
                return name
            body = merged_body(current, wanted)
            where = {"defender_policy": name, "resource_group": place.resource_group}
            self.engine.store.audit(
                "defender_policy_intended",
                ACTOR,
                request_id,
                **where,
                location=place.location,
                vm=place.vm_id,
                ports=wanted["ports"],
                other_vms=len(body["properties"]["virtualMachines"]) - 1,
            )
            try:
                written = self.cloud.put_policy(place.resource_group, place.location, name, body)
            except CloudError as exc:
                text = explain_error(exc, place.vm_name, writing_policy=True)
                raise CloudError(text, exc.code, exc.status) from exc
            lost = lost_entries(current, written)
            self.engine.store.audit(
                "defender_policy_written", ACTOR, request_id, **where, lost_vms=lost
            )
            if lost:
                log.error("Defender policy %s lost VM entries on write: %s", name, lost)
            log.info("Defender policy %s now covers %s", name, place.vm_name)
            return name

    def _initiate(
        self, grant: Grant, place: VmPlace, name: str, body: dict[str, Any], vm_name: str
    ) -> None:
        try:
            answer = self.cloud.initiate(place.resource_group, place.location, name, body)
        except CloudError as exc:
            if exc.status in CLIENT_ERROR_STATUSES and exc.status != 429:
                # Defender answered and refused: nothing was opened.
                self._update(grant, GrantState.REMOVED, audit=("defender_refused", exc.code))
                raise CloudError(explain_error(exc, vm_name), exc.code, exc.status) from exc
            error = exc.code or str(exc.status)
        except Exception as exc:
            error = type(exc).__name__
        else:
            started = answer.get("startTimeUtc")
            self._update(
                grant,
                GrantState.PRESENT,
                rule={**grant.rule, "startTimeUtc": started},
                audit=("defender_initiated", None),
            )
            log.info("request %s: Defender initiated at %s", grant.request_id, started)
            return
        log.warning("request %s: initiate outcome unknown (%s)", grant.request_id, error)
        try:
            self._settle_uncertain(grant, error)
        except CloudError as exc:  # settled later, by the wait or the sweep
            log.warning("request %s: Defender unreadable (%s)", grant.request_id, exc.code)

    def _settle_uncertain(self, grant: Grant, error: str) -> None:
        """After an initiate whose outcome is unknown (a dropped connection, a 5xx), or a
        crash in the middle of one: ask Defender's history whether it happened.

        Found: the grant is present. Not found: a call still in flight may land later, so
        the grant stays ``creating`` until ``settle_seconds`` after the intent was
        stored, and only then counts as never made.
        """
        found = self._find(grant)
        if found is None:
            assert grant.created_at is not None
            age = (self.engine.clock() - grant.created_at).total_seconds()
            if age >= self.settle_seconds:
                self._update(grant, GrantState.REMOVED, audit=("defender_initiate_absent", error))
            return
        started = found.get("startTimeUtc")
        self._update(
            grant,
            GrantState.PRESENT,
            rule={**grant.rule, "startTimeUtc": started},
            audit=("defender_initiate_found", error),
        )

    def _wait_open(self, grant: Grant) -> bool:
        """Poll Defender until it reports the ports open, for ``confirm_seconds``. A read
        that fails counts as "not known yet": once the initiate may have happened, the
        request is never failed as if nothing were open."""
        deadline = time.monotonic() + self.confirm_seconds
        while True:
            try:
                status = self._current(grant)
            except CloudError as exc:
                log.warning("request %s: Defender unreadable (%s)", grant.request_id, exc.code)
                status = DefenderStatus(PortState.UNKNOWN, detail=f"unreadable: {exc.code}")
            if status.state == PortState.OPEN:
                return True
            if status.state == PortState.CLOSED:
                raise PlacementError(
                    "Defender for Cloud closed the request before reporting it open "
                    f"({status.reason}); ask again"
                )
            if time.monotonic() >= deadline:
                self.engine.store.audit(
                    "defender_not_confirmed", ACTOR, grant.request_id, statuses=status.detail
                )
                return False
            self.sleep(self.poll_seconds)

    def _current(self, grant: Grant) -> DefenderStatus:
        if grant.state == GrantState.CREATING:
            self._settle_uncertain(grant, "answer lost")
            if grant.state == GrantState.REMOVED:
                raise PlacementError(
                    "the initiate call to Defender for Cloud failed and Defender holds no "
                    "such request; nothing was opened, ask again"
                )
        return self.status(grant)

    # -- following ---------------------------------------------------------------------

    def grant_of(self, request_id: int) -> Grant | None:
        grants = [g for g in self.engine.grants_of(request_id) if g.kind == GRANT_KIND]
        return grants[-1] if grants else None

    def status(self, grant: Grant) -> DefenderStatus:
        """The request's state as Defender's policy history says it."""
        rule = grant.rule
        policy = self.cloud.get_policy(rule["resource_group"], rule["location"], rule["policy"])
        request = self._request_in(policy, grant) if policy else None
        ports = [p["number"] for p in rule["initiate"]["virtualMachines"][0]["ports"]]
        return status_of(request, rule["vm_id"], ports)

    def _find(self, grant: Grant) -> dict[str, Any] | None:
        rule = grant.rule
        policy = self.cloud.get_policy(rule["resource_group"], rule["location"], rule["policy"])
        return self._request_in(policy, grant) if policy else None

    def _request_in(self, policy: dict[str, Any], grant: Grant) -> dict[str, Any] | None:
        started = parse_utc(grant.rule.get("startTimeUtc"))
        marker = request_marker(grant.request_id)
        found = find_request(policy, grant.rule["vm_id"], started, None) if started else None
        return found or find_request(policy, grant.rule["vm_id"], None, marker)

    def follow_opening(self, request_id: int) -> None:
        """The sweep, for a request left opening (Defender had not confirmed, or jitbot
        stopped): activate it once Defender reports it open, fail it if Defender never
        got the initiate or closed it first; otherwise keep waiting."""
        engine = self.engine
        request = engine._require(request_id)
        grant = self.grant_of(request_id)
        if grant is None:
            engine._fail(request, "jitbot restarted before asking Defender for Cloud; ask again")
            return
        if grant.state == GrantState.CREATING:
            self._settle_uncertain(grant, "jitbot restarted during initiate")
            if grant.state == GrantState.CREATING:
                return  # it may still land; look again at the next sweep
        if grant.state == GrantState.REMOVED:
            engine._fail(
                request,
                "Defender for Cloud never received the request (jitbot restarted); "
                "nothing was opened, ask again",
            )
            return
        status = self.status(grant)
        if status.state == PortState.OPEN:
            engine._activate(request_id)
        elif status.state == PortState.CLOSED:
            engine._fail(
                request,
                f"Defender for Cloud closed the request ({status.reason}) before reporting it open",
            )

    def follow_active(self, request_id: int) -> None:
        """The sweep, for an active request: when Defender reports it closed before its
        end (superseded by a newer request, or ended in Defender), close it here too."""
        grant = self.grant_of(request_id)
        if grant is None or grant.state != GrantState.PRESENT:
            return
        status = self.status(grant)
        if status.state != PortState.CLOSED:
            return
        reason = status.reason or "closed"
        log.info("request %s: Defender reports it closed (%s)", request_id, reason)
        self.engine._close(request_id, RequestStatus.CLOSED, reason, ACTOR)

    def closed_in_defender(self, grant: Grant) -> bool:
        """For closing: True (and the grant marked removed) once Defender reports every
        port ``Revoked``; False while it may still be open."""
        if grant.state == GrantState.CREATING:
            self._settle_uncertain(grant, "closing")
            if grant.state == GrantState.REMOVED:
                return True
            if grant.state == GrantState.CREATING:
                return False
        status = self.status(grant)
        if status.state != PortState.CLOSED:
            log.debug("request %s: Defender still reports %s", grant.request_id, status.detail)
            return False
        self._update(
            grant,
            GrantState.REMOVED,
            rule={**grant.rule, "closed_reason": status.reason, "statuses": status.detail},
            audit=("defender_closed", status.reason),
        )
        return True

    def note_early_end(self, request_id: int, actor_id: str) -> None:
        """Tell the requester that Defender keeps the port open until its end time."""
        request = self.engine._require(request_id)
        if request.ends_at is None:
            return
        args = {"by": actor_id, "ends_at": request.ends_at.isoformat()}
        with self.engine.store.session() as session:
            session.add(self.engine.store.notification(request_id, "defender_end_pending", args))
            session.add(
                AuditEvent(
                    at=self.engine.clock(),
                    request_id=request_id,
                    actor=actor_id,
                    action="defender_end_pending",
                    detail=args,
                )
            )
            session.commit()
        self.engine.deliver(request_id)

    def closed_notice(self, request_id: int) -> dict[str, Any]:
        grant = self.grant_of(request_id)
        rule = grant.rule if grant else {}
        return {
            "defender_policy": rule.get("policy"),
            "reason": rule.get("closed_reason"),
            "statuses": rule.get("statuses", ""),
        }

    def _update(
        self,
        grant: Grant,
        state: str,
        rule: dict[str, Any] | None = None,
        audit: tuple[str, str | None] | None = None,
    ) -> None:
        """Store the grant's new state (and record), with its audit line, in one go."""
        line = None
        if audit is not None:
            action, note = audit
            detail: dict[str, Any] = {"defender_policy": grant.rule_name}
            if note:
                detail["note"] = note
            line = (action, detail)
        self.engine._set_grant(grant, state, audit=line, rule=rule)


def is_defender(policy: Policy | None) -> bool:
    return policy is not None and policy.enforcement == "defender"
