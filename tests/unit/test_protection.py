from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from jitcore.db import Store, create_schema, make_engine
from jitcore.engine import Engine, PolicySet
from jitcore.errors import PlacementError
from jitcore.model import RequestStatus
from jitcore.policy import parse_policies
from jitcore.protection import Protector
from tests.fakes import DENY, NSG, FakeCloud, RecordingNotifier

SUBNET_NSG = NSG.replace("nsg-web01", "nsg-snet-web")
POLICY = {
    "name": "web-admin",
    "vms": ["vm-web01"],
    "ports": [{"port": 22, "max_duration": "3h"}, {"port": 3389, "max_duration": "3h"}],
    "min_duration": "1s",
    "approvers": ["U0APPROVR1"],
    "approval_channel": "C0OPS12345",
}


@pytest.fixture
def parts(tmp_path):
    store = Store(make_engine(f"sqlite:///{tmp_path / 'jit.db'}"))
    create_schema(store.engine)
    cloud = FakeCloud(nsg_ids=(SUBNET_NSG, NSG))
    cloud.rules[SUBNET_NSG] = {}
    cloud.rules[NSG] = {}
    now = [datetime(2026, 12, 4, 12, 0, tzinfo=UTC)]
    policies = PolicySet(parse_policies({"policies": [POLICY]}), {"web-admin": 1})
    drift: list = []
    protector = Protector(
        store, policies, cloud, on_drift=lambda c, f: drift.append((c, f)), clock=lambda: now[0]
    )
    engine = Engine(store, policies, cloud, RecordingNotifier(), clock=lambda: now[0])
    yield protector, engine, cloud, now, drift
    store.engine.dispose()


def test_protect_puts_a_deny_in_every_nsg_on_the_path_and_is_idempotent(parts) -> None:
    protector, _, cloud, _, _ = parts
    outcome = protector.protect("VM-WEB01", "U0ADMIN")
    assert len(outcome.created) == 2
    for nsg in (SUBNET_NSG, NSG):
        deny = cloud.rules[nsg]["jitbot-deny-vm-web01"]["properties"]
        assert deny["access"] == "Deny" and deny["destinationPortRanges"] == ["22", "3389"]
    writes = len(cloud.writes)
    again = protector.protect("vm-web01", "U0ADMIN")
    assert again.created == () and len(again.already_protected) == 2
    assert len(cloud.writes) == writes


def test_a_vm_without_any_nsg_is_not_protectable(parts) -> None:
    protector, _, cloud, _, _ = parts
    cloud.nsg_ids = ()
    with pytest.raises(PlacementError, match="not protectable"):
        protector.protect("vm-web01", "U0ADMIN")


def test_unprotect_removes_only_jitbots_deny_rules(parts) -> None:
    protector, _, cloud, _, _ = parts
    cloud.rules[NSG]["customer-deny"] = {
        "name": "customer-deny",
        "properties": {**DENY["properties"], "description": "ops", "priority": 4000},
    }
    protector.protect("vm-web01", "U0ADMIN")
    removed = protector.unprotect("vm-web01", "U0ADMIN")
    assert len(removed) == 2
    assert list(cloud.rules[NSG]) == ["customer-deny"]
    assert cloud.rules[SUBNET_NSG] == {}


def test_grants_open_in_subnet_and_nic_nsgs_and_both_are_restored(parts) -> None:
    protector, engine, cloud, now, _ = parts
    protector.protect("vm-web01", "U0ADMIN")
    before = {nsg: dict(cloud.rules[nsg]) for nsg in (SUBNET_NSG, NSG)}
    request = engine.submit("T", "U0REQ", "vm-web01", [22], timedelta(hours=1), "203.0.113.7")
    engine.approve(request.id, "U0APPROVR1")
    assert [g.nsg_id for g in engine.grants_of(request.id)] == [SUBNET_NSG, NSG]
    now[0] += timedelta(hours=1)
    assert engine.expire(request.id)
    assert {nsg: cloud.rules[nsg] for nsg in (SUBNET_NSG, NSG)} == before


def test_overlapping_grants_share_one_rule_until_the_last_ends(parts) -> None:
    protector, engine, cloud, now, _ = parts
    protector.protect("vm-web01", "U0ADMIN")
    first = engine.submit("T", "U0REQ", "vm-web01", [22], timedelta(hours=1), "203.0.113.7")
    engine.approve(first.id, "U0APPROVR1")
    second = engine.submit("T", "U0REQ", "vm-web01", [22], timedelta(hours=2), "203.0.113.7")
    engine.approve(second.id, "U0APPROVR1")

    allows = [n for n in cloud.rules[NSG] if n.startswith("jitbot-allow")]
    assert allows == ["jitbot-allow-r1"]
    assert (
        "until 2026-12-04T14:00:00Z"
        in cloud.rules[NSG]["jitbot-allow-r1"]["properties"]["description"]
    )

    now[0] += timedelta(hours=1)
    assert engine.expire(first.id)
    assert "jitbot-allow-r1" in cloud.rules[NSG]
    assert engine.notifier.reports[-1].restored

    now[0] += timedelta(hours=1)
    assert engine.expire(second.id)
    assert [n for n in cloud.rules[NSG] if n.startswith("jitbot-allow")] == []


def test_different_sources_get_distinct_rules_at_distinct_priorities(parts) -> None:
    protector, engine, cloud, _, _ = parts
    protector.protect("vm-web01", "U0ADMIN")
    a = engine.submit("T", "U0REQ", "vm-web01", [22], timedelta(hours=1), "203.0.113.7")
    b = engine.submit("T", "U0OTHER", "vm-web01", [22], timedelta(hours=1), "198.51.100.9")
    engine.approve(a.id, "U0APPROVR1")
    engine.approve(b.id, "U0APPROVR1")
    priorities = [r["properties"]["priority"] for n, r in cloud.rules[NSG].items() if "allow" in n]
    assert len(set(priorities)) == 2
    engine.revoke(a.id, "U0REQ")
    assert engine.notifier.reports[-1].restored


def test_reconcile_puts_back_a_removed_deny_and_reports_it(parts) -> None:
    protector, _, cloud, _, drift = parts
    protector.protect("vm-web01", "U0ADMIN")
    del cloud.rules[NSG]["jitbot-deny-vm-web01"]
    findings = protector.reconcile()
    assert [f.problem for f in findings] == ["the JIT deny rule was removed outside jitbot"]
    assert "jitbot-deny-vm-web01" in cloud.rules[NSG]
    assert drift and drift[0][0] == "C0OPS12345"


def test_reconcile_restores_an_allow_widened_outside(parts) -> None:
    protector, engine, cloud, _, _ = parts
    protector.protect("vm-web01", "U0ADMIN")
    request = engine.submit("T", "U0REQ", "vm-web01", [22], timedelta(hours=1), "203.0.113.7")
    engine.approve(request.id, "U0APPROVR1")
    cloud.rules[NSG]["jitbot-allow-r1"]["properties"]["sourceAddressPrefix"] = "*"
    protector.reconcile()
    assert (
        cloud.rules[NSG]["jitbot-allow-r1"]["properties"]["sourceAddressPrefix"] == "203.0.113.7/32"
    )


def test_reconcile_removes_an_expired_allow_unknown_to_the_database(parts) -> None:
    protector, _, cloud, _, _ = parts
    cloud.rules[NSG]["jitbot-allow-r99"] = {
        "name": "jitbot-allow-r99",
        "properties": {
            "priority": 999,
            "direction": "Inbound",
            "access": "Allow",
            "description": "jitbot r99 until 2026-12-04T11:00:00Z for vm-web01",
        },
    }
    findings = protector.reconcile()
    assert "jitbot-allow-r99" not in cloud.rules[NSG]
    assert findings[0].action == "removed"


def test_reconcile_leaves_an_unexpired_allow_unknown_to_the_database_and_reports_it(
    parts,
) -> None:
    protector, _, cloud, _, _ = parts
    rule = {
        "name": "jitbot-allow-r99",
        "properties": {
            "priority": 999,
            "direction": "Inbound",
            "access": "Allow",
            "description": "jitbot r99 until 2099-12-04T11:00:00Z for vm-web01",
        },
    }
    cloud.rules[NSG]["jitbot-allow-r99"] = rule

    findings = protector.reconcile()

    assert cloud.rules[NSG]["jitbot-allow-r99"] == rule
    [finding] = findings
    assert finding.action == "left in place until its end"
    assert "does not know" in finding.problem


def test_reconcile_leaves_live_grants_and_other_rules_alone(parts) -> None:
    protector, engine, cloud, _, _ = parts
    protector.protect("vm-web01", "U0ADMIN")
    request = engine.submit("T", "U0REQ", "vm-web01", [22], timedelta(hours=1), "203.0.113.7")
    engine.approve(request.id, "U0APPROVR1")
    snapshot = {nsg: dict(cloud.rules[nsg]) for nsg in cloud.rules}
    assert protector.reconcile() == []
    assert {nsg: cloud.rules[nsg] for nsg in cloud.rules} == snapshot
    assert engine.store.get_request(request.id).status == RequestStatus.ACTIVE


def test_scan_classifies_exposed_protected_closed_and_not_applicable(parts) -> None:
    protector, _, cloud, _, _ = parts
    results = {r.vm_name: r for r in protector.scan(["vm-web01"])}
    assert results["vm-web01"].status == "closed"
    cloud.rules[NSG]["open-ssh"] = {
        "name": "open-ssh",
        "properties": {
            "priority": 200,
            "direction": "Inbound",
            "access": "Allow",
            "protocol": "Tcp",
            "sourceAddressPrefix": "Internet",
            "destinationAddressPrefix": "*",
            "destinationPortRange": "22",
        },
    }
    cloud.rules[SUBNET_NSG]["open-ssh"] = cloud.rules[NSG]["open-ssh"]
    assert protector.scan(["vm-web01"])[0].status == "exposed"
    del cloud.rules[NSG]["open-ssh"], cloud.rules[SUBNET_NSG]["open-ssh"]
    protector.protect("vm-web01", "U0ADMIN")
    assert protector.scan(["vm-web01"])[0].status == "protected"
    cloud.nsg_ids = ()
    assert protector.scan(["vm-web01"])[0].status == "not applicable"
