"""`/jit policy protect|unprotect` and `/jit scan` over signed HTTP: admins only, answers
from the Protector, and a scan message edited in place as it goes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import bot.protection
from bot.sandbox import SandboxStack
from sandbox.slack import seed
from tests.scenario.harness import Driver, wait_until, write_policy
from tests.scenario.test_network_enforcement import POLICY, network_seed

ADMIN = seed.APPROVER_1  # Owner at the subscription
NOT_ADMIN = seed.APPROVER_2


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SandboxStack]:
    monkeypatch.setattr(bot.protection, "SCAN_UPDATE_EVERY", 1)
    running = SandboxStack(
        tmp_path,
        policy_file=write_policy(tmp_path, POLICY),
        sweep_interval=1.0,
        arm_seed=network_seed(),
        reconcile_interval=3600,
    ).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def driver(stack: SandboxStack) -> Driver:
    return Driver(stack)


def rule_names(stack: SandboxStack, nsg: str) -> list[str]:
    nsg_id = (
        f"/subscriptions/{stack.arm.subscription_id}/resourceGroups/rg-jit-demo"
        f"/providers/Microsoft.Network/networkSecurityGroups/{nsg}"
    )
    return [rule["name"] for rule in stack.arm.snapshot_nsg(nsg_id)]


def test_an_admin_protects_then_unprotects_a_vm_from_chat(
    driver: Driver, stack: SandboxStack
) -> None:
    _status, protected = driver.command("policy protect vm-app01", user=ADMIN)

    assert protected["text"].startswith(":shield: *vm-app01* is protected")
    assert "`nsg-snet-app (priority" in protected["text"]
    assert "`nsg-app01 (priority" in protected["text"]
    for nsg in ("nsg-snet-app", "nsg-app01"):
        assert "jitbot-deny-vm-app01" in rule_names(stack, nsg)

    _status, unprotected = driver.command("policy unprotect vm-app01", user=ADMIN)

    assert "removed from `nsg-snet-app`, `nsg-app01`" in unprotected["text"]
    for nsg in ("nsg-snet-app", "nsg-app01"):
        assert "jitbot-deny-vm-app01" not in rule_names(stack, nsg)
    assert stack.bot is not None
    actions = [(e.action, e.actor) for e in stack.bot.store.audit_events()]
    assert ("deny_created", ADMIN) in actions and ("deny_removed", ADMIN) in actions


def test_protect_says_why_a_vm_without_an_nsg_is_not_protectable(driver: Driver) -> None:
    _status, reply = driver.command("policy protect vm-bare01", user=ADMIN)

    assert reply["text"].startswith(":no_entry: vm-bare01 is not protectable")
    assert "no network security group" in reply["text"]


@pytest.mark.parametrize("text", ["policy protect vm-app01", "policy unprotect vm-web01", "scan"])
def test_protection_commands_need_the_configure_actions(
    driver: Driver, stack: SandboxStack, text: str
) -> None:
    _status, reply = driver.command(text, user=NOT_ADMIN)

    assert reply["text"].startswith(":no_entry: You cannot administer jitbot")
    assert "`Microsoft.Compute/virtualMachines/write`" in reply["text"]
    assert [r for r in stack.arm.requests() if r["method"] in ("PUT", "DELETE")] == []
    assert driver.dms_to(NOT_ADMIN) == []


def test_scan_posts_to_the_admin_updates_in_place_and_ends_with_each_vm_classified(
    driver: Driver, stack: SandboxStack
) -> None:
    _status, reply = driver.command("scan", user=ADMIN)

    assert "results are in your direct messages" in reply["text"]
    [posted] = wait_until(lambda: driver.dms_to(ADMIN), what="the scan message")
    assert posted.startswith(":mag: Scanning")
    [post] = [c for c in stack.slack.calls("chat.postMessage")]
    ts, channel = post["response"]["ts"], post["response"]["channel"]
    final = wait_until(
        lambda: [c for c in stack.slack.calls("chat.update") if "blocks" in c["args"] and c["ok"]],
        what="the scan's results",
    )[-1]["args"]
    edits = [c["args"] for c in stack.slack.calls("chat.update")]
    assert {(e["channel"], e["ts"]) for e in edits} == {(channel, ts)}
    progress = [e["text"] for e in edits if "blocks" not in e]
    assert progress == [
        ":mag: Scanning the subscription's VMs for JIT exposure… 1/4 VMs checked.",
        ":mag: Scanning the subscription's VMs for JIT exposure… 2/4 VMs checked.",
        ":mag: Scanning the subscription's VMs for JIT exposure… 3/4 VMs checked.",
    ]
    assert final["text"].startswith("JIT exposure scan of 4 VMs:")
    body = "\n".join(b["text"]["text"] for b in final["blocks"] if b["type"] == "section")
    assert "*Not applicable* (1)\n• `vm-bare01` — no NSG on its NICs or subnets" in body
    assert "*Closed* (1)\n• `vm-app01` — no management port reachable" in body
    assert "*Protected* (2)\n• `vm-db01` — JIT deny rules" in body and "`vm-web01`" in body
    assert stack.bot is not None
    [audit] = [e for e in stack.bot.store.audit_events() if e.action == "scanned"]
    assert audit.actor == ADMIN and audit.detail["vms"] == 4
