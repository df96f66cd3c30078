"""Keeping VMs protected: JIT deny rules, drift repair, and the exposure scan.

``protect`` puts a deny for the policy's ports in front of a VM in every NSG on its
path; ``unprotect`` removes only jitbot's deny rules. ``reconcile`` compares the NSGs with
what the database says jitbot owns and repairs what drifted: a deny removed or edited by
someone else (an IaC apply, a hand edit) is put back, an allow rule of jitbot's whose
grant is over is removed, an allow edited outside is written back as it was granted.
``scan`` classifies every VM the way Defender for Cloud does its JIT recommendation.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlmodel import col, select

from jitcore.db import Store
from jitcore.engine import SYSTEM_ACTOR, NetworkCloud, PolicySet
from jitcore.errors import CloudError, PlacementError, UnknownVm
from jitcore.model import AccessRequest, Grant, GrantState, Protection, RequestStatus, utcnow
from jitcore.planner import (
    ALLOW_PREFIX,
    DENY_PREFIX,
    Rule,
    comparable,
    parse_allow_description,
    plan_deny,
    ports_overlap,
    prefixes_overlap,
)

log = logging.getLogger(__name__)

MANAGEMENT_PORTS = (22, 3389, 5985, 5986)
LIVE_STATUSES = (RequestStatus.OPENING, RequestStatus.ACTIVE, RequestStatus.CLOSING)


@dataclass(frozen=True)
class ProtectOutcome:
    vm_name: str
    created: tuple[str, ...]
    already_protected: tuple[str, ...]


@dataclass(frozen=True)
class DriftFinding:
    nsg: str
    rule: str
    problem: str
    action: str

    def describe(self) -> str:
        return f"{_short(self.nsg)}/{self.rule}: {self.problem}; {self.action}"


@dataclass(frozen=True)
class ScanResult:
    vm_name: str
    status: str
    reason: str


class Protector:
    def __init__(
        self,
        store: Store,
        policies: PolicySet,
        cloud: NetworkCloud,
        on_drift: Callable[[str, list[DriftFinding]], None] | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.policies = policies
        self.cloud = cloud
        self.on_drift = on_drift
        self.clock = clock

    # -- protect and unprotect -------------------------------------------------------

    def protect(self, vm: str, actor: str) -> ProtectOutcome:
        policy = next((p for p in self.policies.policies if p.match(vm)), None)
        if policy is None:
            known = sorted({e.rsplit("/", 1)[-1] for p in self.policies.policies for e in p.vms})
            raise UnknownVm(vm, known)
        vm_name = policy.match(vm) or vm
        if policy.enforcement == "defender":
            raise PlacementError(
                f"{vm_name} is under policy {policy.name} with enforcement defender: Defender "
                "for Cloud's JIT policy protects it, so jitbot adds no deny rule of its own"
            )
        ports = [rule.port for rule in policy.ports]
        network = self.cloud.network_of(vm_name)
        if not network.nsg_ids:
            raise PlacementError(
                f"{vm_name} is not protectable: no network security group on its NICs or "
                "subnets, so there is nowhere to put a deny rule"
            )
        created, already = [], []
        for nsg_id in network.nsg_ids:
            with self.cloud.lock_for(nsg_id):
                rules = [Rule.from_arm(r) for r in self.cloud.custom_rules(nsg_id)]
                deny = plan_deny(rules, vm_name, network.primary_private_ip, ports)
                existing = next((r for r in rules if r.name.lower() == deny.name.lower()), None)
                if existing is not None and existing.owned_by_jitbot:
                    already.append(_short(nsg_id))
                    self._remember(vm_name, nsg_id, existing, ports, GrantState.PRESENT)
                    continue
                row = self._remember(vm_name, nsg_id, deny, ports, GrantState.CREATING)
                self.store.audit(
                    "deny_intended", actor, None, vm=vm_name, nsg=nsg_id, rule=deny.name
                )
                self.cloud.create_rule(nsg_id, deny.name, deny.to_arm_properties())
                self._set_state(row, GrantState.PRESENT)
                self.store.audit(
                    "deny_created", actor, None, vm=vm_name, nsg=nsg_id, priority=deny.priority
                )
                log.info("protected %s in %s at priority %s", vm_name, nsg_id, deny.priority)
                created.append(f"{_short(nsg_id)} (priority {deny.priority})")
        return ProtectOutcome(vm_name, tuple(created), tuple(already))

    def unprotect(self, vm: str, actor: str) -> list[str]:
        """Remove jitbot's deny rules for a VM; returns the NSGs they were removed from."""
        network = self.cloud.network_of(vm)
        removed = []
        for nsg_id in network.nsg_ids:
            with self.cloud.lock_for(nsg_id):
                for raw in self.cloud.custom_rules(nsg_id):
                    rule = Rule.from_arm(raw)
                    if not (rule.name.startswith(DENY_PREFIX) and rule.owned_by_jitbot):
                        continue
                    if not rule.description.endswith(f" {network.vm_name}"):
                        continue
                    self._mark_protections(nsg_id, rule.name, GrantState.REMOVING)
                    self.store.audit("deny_removing", actor, None, nsg=nsg_id, rule=rule.name)
                    self.cloud.delete_rule(nsg_id, rule.name)
                    self._mark_protections(nsg_id, rule.name, GrantState.REMOVED)
                    self.store.audit("deny_removed", actor, None, nsg=nsg_id, rule=rule.name)
                    removed.append(_short(nsg_id))
        return removed

    # -- drift -----------------------------------------------------------------------

    def reconcile(self) -> list[DriftFinding]:
        """Compare every NSG jitbot has rules in (or should) with the database; repair."""
        findings: list[DriftFinding] = []
        for nsg_id, vm_name in self._nsgs_to_watch().items():
            try:
                with self.cloud.lock_for(nsg_id):
                    findings.extend(self._reconcile_nsg(nsg_id))
            except CloudError as exc:
                log.warning("reconcile: cannot check %s: %s", nsg_id, exc.message)
                continue
            if findings and self.on_drift is not None:
                policy = next((p for p in self.policies.policies if p.match(vm_name)), None)
                mine = [f for f in findings if f.nsg == nsg_id]
                if policy is not None and mine:
                    self.on_drift(policy.approval_channel, mine)
        for finding in findings:
            self.store.audit(
                "drift",
                SYSTEM_ACTOR,
                None,
                nsg=finding.nsg,
                rule=finding.rule,
                problem=finding.problem,
                repair=finding.action,
            )
        return findings

    def _nsgs_to_watch(self) -> dict[str, str]:
        """NSG id -> a VM it protects: from the database and from the policies' VMs, so
        that rules are found even when the database is older than the NSG."""
        watched: dict[str, str] = {}
        with self.store.session() as session:
            for row in session.exec(
                select(Protection).where(Protection.state == GrantState.PRESENT)
            ):
                watched.setdefault(row.nsg_id, row.vm_name)
            query = select(Grant, AccessRequest).where(Grant.request_id == AccessRequest.id)
            for grant, request in session.exec(query.where(Grant.state != GrantState.REMOVED)):
                if grant.kind != "defender":  # a Defender JIT policy, not an NSG
                    watched.setdefault(grant.nsg_id, request.vm_name)
        for policy in self.policies.policies:
            if policy.enforcement == "defender":  # Defender owns those VMs' rules
                continue
            for entry in policy.vms:
                try:
                    network = self.cloud.network_of(entry)
                except CloudError:
                    continue
                for nsg_id in network.nsg_ids:
                    watched.setdefault(nsg_id, network.vm_name)
        by_key: dict[str, str] = {}
        result: dict[str, str] = {}
        for nsg_id, vm in watched.items():
            if nsg_id.lower() not in by_key:
                by_key[nsg_id.lower()] = nsg_id
                result[nsg_id] = vm
        return result

    def _reconcile_nsg(self, nsg_id: str) -> list[DriftFinding]:
        findings = []
        current = {r["name"].lower(): r for r in self.cloud.custom_rules(nsg_id)}
        for protection in self._protections_in(nsg_id):
            found = current.get(protection.rule_name.lower())
            if found is None:
                self.cloud.create_rule(nsg_id, protection.rule_name, protection.rule)
                findings.append(
                    DriftFinding(
                        nsg_id,
                        protection.rule_name,
                        "the JIT deny rule was removed outside jitbot",
                        "put back",
                    )
                )
            elif _differs(found, protection.rule):
                self.cloud.create_rule(nsg_id, protection.rule_name, protection.rule)
                findings.append(
                    DriftFinding(
                        nsg_id,
                        protection.rule_name,
                        "the JIT deny rule was changed outside jitbot",
                        "restored",
                    )
                )
        live = self._live_grants_in(nsg_id)
        for grant in live.values():
            found = current.get(grant.rule_name.lower())
            if found is None:
                findings.append(
                    DriftFinding(
                        nsg_id,
                        grant.rule_name,
                        "an allow rule of a live grant was deleted outside jitbot",
                        "left closed",
                    )
                )
            elif _differs(found, grant.rule):
                self.cloud.create_rule(nsg_id, grant.rule_name, grant.rule)
                findings.append(
                    DriftFinding(
                        nsg_id,
                        grant.rule_name,
                        "an allow rule was changed outside jitbot",
                        "restored to what was granted",
                    )
                )
        now = self.clock()
        for name, raw in current.items():
            if not name.startswith(ALLOW_PREFIX) or name in live:
                continue
            parsed = parse_allow_description(raw.get("properties", {}).get("description", ""))
            if parsed is None:
                continue
            request_id, ends_at = parsed
            if ends_at > now and self._request_is_live(request_id):
                continue
            if ends_at > now and self.store.get_request(request_id) is None:
                # jitbot records a grant before it writes the rule, so a rule naming a
                # request this database never had was written by another deployment (or
                # against another database): not ours to take away before its end.
                findings.append(
                    DriftFinding(
                        nsg_id,
                        raw["name"],
                        f"allow rule names request {request_id}, which this database does "
                        "not know (another jitbot deployment or database?)",
                        "left in place until its end",
                    )
                )
                continue
            self.cloud.delete_rule(nsg_id, raw["name"])
            findings.append(
                DriftFinding(
                    nsg_id,
                    raw["name"],
                    f"allow rule of request {request_id} has no live grant",
                    "removed",
                )
            )
        return findings

    def _protections_in(self, nsg_id: str) -> list[Protection]:
        with self.store.session() as session:
            rows = session.exec(select(Protection).where(Protection.state == GrantState.PRESENT))
            return [row for row in rows if row.nsg_id.lower() == nsg_id.lower()]

    def _live_grants_in(self, nsg_id: str) -> dict[str, Grant]:
        with self.store.session() as session:
            query = (
                select(Grant)
                .join(AccessRequest, col(Grant.request_id) == col(AccessRequest.id))
                .where(col(AccessRequest.status).in_(LIVE_STATUSES))
                .where(Grant.state == GrantState.PRESENT)
            )
            return {
                g.rule_name.lower(): g
                for g in session.exec(query)
                if g.nsg_id.lower() == nsg_id.lower()
            }

    def _request_is_live(self, request_id: int) -> bool:
        request = self.store.get_request(request_id)
        return request is not None and request.status in LIVE_STATUSES

    # -- scan ------------------------------------------------------------------------

    def scan(
        self, vm_names: Iterable[str], progress: Callable[[int, int], None] | None = None
    ) -> list[ScanResult]:
        names = list(vm_names)
        results = []
        cache: dict[str, list[Rule]] = {}
        for done, name in enumerate(names, start=1):
            results.append(self._classify(name, cache))
            if progress is not None:
                progress(done, len(names))
        return results

    def _classify(self, vm_name: str, cache: dict[str, list[Rule]]) -> ScanResult:
        try:
            network = self.cloud.network_of(vm_name)
        except CloudError as exc:
            return ScanResult(vm_name, "not applicable", exc.message)
        if not network.nsg_ids:
            return ScanResult(vm_name, "not applicable", "no NSG on its NICs or subnets")
        paths = []
        for nsg_id in network.nsg_ids:
            if nsg_id not in cache:
                cache[nsg_id] = [Rule.from_arm(r) for r in self.cloud.custom_rules(nsg_id)]
            paths.append(cache[nsg_id])
        destination = network.primary_private_ip
        exposed = [
            p
            for p in MANAGEMENT_PORTS
            if all(_internet_allowed(rules, destination, p) for rules in paths)
        ]
        protected = all(
            any(
                r.name.startswith(DENY_PREFIX)
                and r.owned_by_jitbot
                and prefixes_overlap(destination, r.destination_prefixes)
                for r in rules
            )
            for rules in paths
        )
        if exposed:
            ports = ", ".join(str(p) for p in exposed)
            return ScanResult(
                vm_name, "exposed", f"management port(s) {ports} reachable from the internet"
            )
        if protected:
            return ScanResult(vm_name, "protected", "JIT deny rules on every NSG on its path")
        return ScanResult(
            vm_name, "closed", "no management port reachable from the internet; not under JIT"
        )

    # -- rows ------------------------------------------------------------------------

    def _remember(
        self, vm_name: str, nsg_id: str, rule: Rule, ports: list[int], state: str
    ) -> Protection:
        now = self.clock()
        with self.store.session() as session:
            row = Protection(
                vm_name=vm_name,
                nsg_id=nsg_id,
                rule_name=rule.name,
                priority=rule.priority,
                ports=",".join(str(p) for p in ports),
                state=state,
                rule=rule.to_arm_properties(),
                created_at=now,
                updated_at=now,
            )
            for old in session.exec(select(Protection).where(Protection.rule_name == rule.name)):
                if old.nsg_id.lower() == nsg_id.lower() and old.state != GrantState.REMOVED:
                    old.state = GrantState.REMOVED
                    old.updated_at = now
                    session.add(old)
            session.add(row)
            session.commit()
            session.refresh(row)
            return row

    def _set_state(self, row: Protection, state: str) -> None:
        with self.store.session() as session:
            stored = session.get(Protection, row.id)
            assert stored is not None
            stored.state = state
            stored.updated_at = self.clock()
            session.add(stored)
            session.commit()

    def _mark_protections(self, nsg_id: str, rule_name: str, state: str) -> None:
        with self.store.session() as session:
            for row in session.exec(select(Protection).where(Protection.rule_name == rule_name)):
                if row.nsg_id.lower() == nsg_id.lower() and row.state != GrantState.REMOVED:
                    row.state = state
                    row.updated_at = self.clock()
                    session.add(row)
            session.commit()


def _differs(found: dict[str, Any], recorded: dict[str, Any]) -> bool:
    return comparable([found]) != comparable([{"name": found["name"], "properties": recorded}])


INTERNET_SOURCES = ("*", "internet", "any")


def _from_internet(prefixes: Iterable[str]) -> bool:
    """Whether a rule's source means "anyone on the internet" (as Defender judges exposure:
    a rule for one address or range is access for someone, not exposure)."""
    for prefix in prefixes:
        if prefix.lower() in INTERNET_SOURCES:
            return True
        try:
            if ipaddress.ip_network(prefix, strict=False).prefixlen == 0:
                return True
        except ValueError:
            continue
    return False


def _internet_allowed(rules: list[Rule], destination: str, port: int) -> bool:
    """Whether TCP from the internet to ``destination:port`` passes this NSG.

    Custom inbound rules are evaluated in priority order and the first match decides; the
    default rules let the internet in nowhere, so no match means denied.
    """
    for rule in sorted(rules, key=lambda r: r.priority):
        if rule.direction.lower() != "inbound":
            continue
        if rule.protocol not in ("*", "Tcp", "tcp", "TCP"):
            continue
        if not ports_overlap(rule.destination_ports, [port]):
            continue
        if not prefixes_overlap(destination, rule.destination_prefixes):
            continue
        if not _from_internet(rule.source_prefixes):
            continue
        return rule.access.lower() == "allow"
    return False


def _short(resource_id: str) -> str:
    return resource_id.rstrip("/").rsplit("/", 1)[-1]
