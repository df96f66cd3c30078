"""A fleet of live grants: many VMs, each with its own NSG already holding jitbot's
allow rules, and the database rows jitbot would have written for them.

It stands for a bot that opened these grants earlier and restarts: the ARM stand-in is
seeded with the rules and the database with the active requests and their grants, both
made by the same planner and in the same shape the engine writes. Setting a fleet up
this way takes seconds instead of the minutes (and the write budget) that opening a
thousand grants through Azure would take.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from jitcore.db import Store, create_schema, make_engine
from jitcore.model import AccessRequest, Grant, GrantState, RequestStatus, utcnow
from jitcore.planner import AllowSpec, Rule, plan_allow

SUBSCRIPTION = "00000000-0000-0000-0000-00000000be1c"
GROUP = "rg-bench"
TEAM = "T0SANDBOX1"
APPROVER = "U0APPROVR1"
CHANNEL = "C0OPS12345"


@dataclass(frozen=True)
class Fleet:
    vms: int
    grants: int

    def vm(self, index: int) -> str:
        return f"vm-bench-{index:03d}"

    def address(self, index: int) -> str:
        return f"10.8.{index // 200}.{index % 200 + 10}"

    def nsg_id(self, index: int) -> str:
        return (
            f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{GROUP}"
            f"/providers/Microsoft.Network/networkSecurityGroups/nsg-bench-{index:03d}"
        )

    def deny_rule(self, index: int) -> dict[str, Any]:
        return {
            "name": f"jitbot-deny-{self.vm(index)}",
            "properties": {
                "description": f"jitbot: JIT deny for {self.vm(index)}",
                "protocol": "*",
                "sourcePortRange": "*",
                "destinationPortRange": "22",
                "sourceAddressPrefix": "*",
                "destinationAddressPrefix": self.address(index),
                "access": "Deny",
                "priority": 1000,
                "direction": "Inbound",
            },
        }

    def policy(self) -> str:
        names = ", ".join(self.vm(i) for i in range(self.vms))
        return (
            "policies:\n"
            "  - name: bench\n"
            f"    vms: [{names}]\n"
            "    ports:\n"
            "      - {port: 22, protocol: Tcp, max_duration: 3h}\n"
            "    min_duration: 1m\n"
            f"    approvers: [{APPROVER}]\n"
            f"    approval_channel: {CHANNEL}\n"
        )


def build(
    fleet: Fleet, workdir: Path, database_url: str, ends: list[datetime]
) -> tuple[Path, Path]:
    """Write the ARM seed and the policy file, and fill the database; ``ends[k]`` is the
    end of grant ``k + 1``, whose rule goes in the NSG of VM ``k % fleet.vms``."""
    rules: dict[int, list[dict[str, Any]]] = {i: [fleet.deny_rule(i)] for i in range(fleet.vms)}
    requests, grants = [], []
    now = utcnow()
    for k, ends_at in enumerate(ends):
        request_id, vm = k + 1, k % fleet.vms
        spec = AllowSpec(
            request_id=request_id,
            vm_name=fleet.vm(vm),
            source_prefix=f"198.18.{k // 250}.{k % 250 + 1}/32",
            destination=fleet.address(vm),
            ports=(22,),
            protocol="Tcp",
            ends_at=ends_at,
        )
        baseline = [dict(r) for r in rules[vm]]
        rule = plan_allow([Rule.from_arm(r) for r in baseline], spec)
        rules[vm].append({"name": rule.name, "properties": rule.to_arm_properties()})
        requests.append(_request(request_id, spec, now, ends_at))
        grants.append(_grant(request_id, fleet.nsg_id(vm), rule, baseline, now))
    _fill_database(database_url, requests, grants)
    seed = workdir / "seed.json"
    seed.write_text(json.dumps(_seed(fleet, rules)), encoding="utf-8")
    policy = workdir / "policies.yaml"
    policy.write_text(fleet.policy(), encoding="utf-8")
    return seed, policy


def spread_ends(count: int, start: datetime, window: float, seed: int = 8) -> list[datetime]:
    """``count`` ends spread evenly over ``window`` seconds from ``start``, in random order
    so that neighbouring ends fall in different NSGs and the order is not the id order."""
    offsets = [window * k / count for k in range(count)]
    random.Random(seed).shuffle(offsets)
    return [start + timedelta(seconds=o) for o in offsets]


def _request(request_id: int, spec: AllowSpec, now: datetime, ends_at: datetime) -> AccessRequest:
    opened = now - timedelta(minutes=5)
    return AccessRequest(
        id=request_id,
        team_id=TEAM,
        requester_id=f"U0BENCH{request_id:05d}",
        vm_name=spec.vm_name,
        ports="22",
        protocol="Tcp",
        source_prefix=spec.source_prefix,
        duration_seconds=int((ends_at - opened).total_seconds()),
        reason="bench",
        policy_name="bench",
        policy_version=1,
        status=RequestStatus.ACTIVE,
        created_at=opened - timedelta(minutes=1),
        decided_at=opened,
        decided_by=APPROVER,
        opened_at=opened,
        ends_at=ends_at,
        approval_channel=CHANNEL,
    )


def _grant(
    request_id: int, nsg_id: str, rule: Rule, baseline: list[dict[str, Any]], now: datetime
) -> Grant:
    return Grant(
        request_id=request_id,
        nsg_id=nsg_id,
        rule_name=rule.name,
        priority=rule.priority,
        state=GrantState.PRESENT,
        rule=rule.to_arm_properties(),
        baseline=baseline,
        created_at=now,
        updated_at=now,
    )


def _fill_database(database_url: str, requests: list[Any], grants: list[Any]) -> None:
    engine = make_engine(database_url)
    create_schema(engine)
    with Store(engine).session() as session:
        session.add_all(requests)
        session.commit()
        session.add_all(grants)
        session.commit()
    engine.dispose()


def _seed(fleet: Fleet, rules: dict[int, list[dict[str, Any]]]) -> dict[str, Any]:
    group = {
        "name": GROUP,
        "location": "westeurope",
        "networkSecurityGroups": [
            {"name": f"nsg-bench-{i:03d}", "securityRules": rules[i]} for i in range(fleet.vms)
        ],
        "virtualNetworks": [
            {
                "name": "vnet-bench",
                "addressPrefixes": ["10.8.0.0/16"],
                "subnets": [{"name": "snet-bench", "addressPrefix": "10.8.0.0/20"}],
            }
        ],
        "networkInterfaces": [
            {
                "name": f"nic-bench-{i:03d}",
                "subnet": "vnet-bench/subnets/snet-bench",
                "privateIPAddress": fleet.address(i),
                "networkSecurityGroup": f"nsg-bench-{i:03d}",
            }
            for i in range(fleet.vms)
        ],
        "virtualMachines": [
            {"name": fleet.vm(i), "networkInterfaces": [f"nic-bench-{i:03d}"]}
            for i in range(fleet.vms)
        ],
    }
    return {"subscriptionId": SUBSCRIPTION, "resourceGroups": [group]}
