"""The engine's Defender path against an in-memory Defender: what is stored before each
call, what an uncertain initiate becomes, and that nothing is called closed before
Defender reports it Revoked."""

from __future__ import annotations

import copy
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from jitcore.azure.defender import VmPlace
from jitcore.db import Store, create_schema, make_engine
from jitcore.defender import utc_text
from jitcore.engine import Engine, PolicySet
from jitcore.errors import CloudError, RequestRejected
from jitcore.model import GrantState, RequestStatus
from jitcore.policy import parse_policies
from tests.fakes import FakeCloud, RecordingNotifier

SUB = "00000000-0000-0000-0000-00000000a11c"
GROUP = "rg-jit-demo"
LOCATION = "westeurope"


def vm_id(name: str) -> str:
    group = f"/subscriptions/{SUB}/resourceGroups/{GROUP}"
    return f"{group}/providers/Microsoft.Compute/virtualMachines/{name}"


class FakeDefender:
    """Defender JIT policies of one resource group and region, held as ARM JSON."""

    subscription_id = SUB

    def __init__(self) -> None:
        self.policies: dict[str, dict[str, Any]] = {}
        self.initiates: list[dict[str, Any]] = []
        self.status_on_initiate = "Initiated"
        self.fail_initiate: CloudError | None = None
        self.record_despite_failure = False
        self.drop_on_put: str | None = None
        self.unreadable_after_initiate = False
        self._lock = threading.Lock()

    def lock_for(self, resource_group: str, location: str) -> threading.Lock:
        return self._lock

    def locate(self, vm: str) -> VmPlace:
        return VmPlace(vm_id(vm), vm, SUB, GROUP, LOCATION)

    def plan(self, subscription_id: str) -> dict[str, Any] | None:
        return {"properties": {"pricingTier": "Standard", "subPlan": "P2"}}

    def policies_in(self, resource_group: str, location: str) -> list[dict[str, Any]]:
        return [copy.deepcopy(p) for p in self.policies.values()]

    def get_policy(self, resource_group: str, location: str, name: str) -> dict[str, Any] | None:
        if self.unreadable_after_initiate and self.initiates:
            raise CloudError("Azure failed: 503", "ServiceUnavailable", 503)
        policy = self.policies.get(name)
        return copy.deepcopy(policy) if policy else None

    def put_policy(
        self, resource_group: str, location: str, name: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        machines = copy.deepcopy(body["properties"]["virtualMachines"])
        if self.drop_on_put:
            machines = [m for m in machines if not m["id"].endswith(self.drop_on_put)]
        old = self.policies.get(name, {"properties": {"requests": []}})
        self.policies[name] = {
            "name": name,
            "kind": body.get("kind", "Basic"),
            "properties": {"virtualMachines": machines, "requests": old["properties"]["requests"]},
        }
        return copy.deepcopy(self.policies[name])

    def initiate(
        self, resource_group: str, location: str, name: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        self.initiates.append(body)
        if self.fail_initiate is not None and not self.record_despite_failure:
            raise self.fail_initiate
        request = {
            "virtualMachines": [
                {
                    "id": vm["id"],
                    "ports": [
                        {
                            **port,
                            "status": self.status_on_initiate,
                            "statusReason": "UserRequested",
                        }
                        for port in vm["ports"]
                    ],
                }
                for vm in body["virtualMachines"]
            ],
            "startTimeUtc": utc_text(datetime.now(UTC)),
            "requestor": "jitbot",
            "justification": body.get("justification", ""),
        }
        self.policies[name]["properties"]["requests"].append(request)
        if self.fail_initiate is not None:
            raise self.fail_initiate
        return copy.deepcopy(request)

    def set_status(self, status: str, reason: str) -> None:
        for policy in self.policies.values():
            for request in policy["properties"]["requests"]:
                for vm in request["virtualMachines"]:
                    for port in vm["ports"]:
                        port["status"], port["statusReason"] = status, reason


class Notifier(RecordingNotifier):
    def defender_closed(self, request: Any, args: dict[str, Any]) -> None:
        self.events.append(("defender_closed", request.id))
        self.reports.append(args)  # type: ignore[arg-type]

    def defender_end_pending(self, request: Any, args: dict[str, Any]) -> None:
        self.events.append(("defender_end_pending", request.id))


class ManualClock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now


POLICY = {
    "name": "web-defender",
    "vms": ["vm-web01"],
    "ports": [{"port": 22, "max_duration": "3h"}],
    "min_duration": "1s",
    "approvers": ["U0APPROVR1"],
    "approval_channel": "C0OPS12345",
    "enforcement": "defender",
}


@pytest.fixture
def world(database_url: str):
    store = Store(make_engine(database_url))
    create_schema(store.engine)
    defender = FakeDefender()
    notifier = Notifier()
    clock = ManualClock()
    policies = parse_policies({"policies": [POLICY]})
    engine = Engine(
        store,
        PolicySet(policies, {"web-defender": 1}),
        FakeCloud(),
        notifier,
        clock=clock,
        lease_seconds=60,
        defender=defender,
    )
    assert engine.defender is not None
    engine.defender.confirm_seconds = 0
    engine.defender.poll_seconds = 0
    yield engine, defender, notifier, clock
    store.engine.dispose()


def approved(engine: Engine, vm: str = "vm-web01") -> int:
    request = engine.submit("T0001ABCD", "U0REQ12345", vm, [22], timedelta(hours=1), "203.0.113.7")
    assert request.id is not None
    engine.approve(request.id, "U0APPROVR1")
    return request.id


def status(engine: Engine, request_id: int) -> str:
    request = engine.store.get_request(request_id)
    assert request is not None
    return request.status


def test_closing_waits_for_defender_to_report_revoked_whatever_it_says_before(world) -> None:
    engine, defender, notifier, clock = world
    request_id = approved(engine)
    assert status(engine, request_id) == RequestStatus.ACTIVE

    clock.now += timedelta(hours=1)
    assert not engine.expire(request_id)
    assert status(engine, request_id) == RequestStatus.CLOSING
    defender.set_status("Pending", "SomethingNew")  # a value Defender may add one day
    engine.sweep()
    assert status(engine, request_id) == RequestStatus.CLOSING
    assert ("defender_closed", request_id) not in notifier.events

    defender.set_status("Revoked", "Expired")
    engine.sweep()

    assert status(engine, request_id) == RequestStatus.CLOSED
    assert notifier.events[-1] == ("defender_closed", request_id)
    assert notifier.reports[-1]["reason"] == "expired"
    [grant] = engine.grants_of(request_id)
    assert grant.state == GrantState.REMOVED


def test_a_request_defender_has_not_confirmed_stays_opening_and_activates_when_it_does(
    world,
) -> None:
    engine, defender, notifier, clock = world
    defender.status_on_initiate = "Initiating"
    request_id = approved(engine)
    assert status(engine, request_id) == RequestStatus.OPENING
    assert ("granted", request_id) not in notifier.events

    engine.sweep()
    assert status(engine, request_id) == RequestStatus.OPENING

    defender.set_status("Initiated", "UserRequested")
    engine.sweep()

    assert status(engine, request_id) == RequestStatus.ACTIVE
    assert ("granted", request_id) in notifier.events


def test_an_initiate_whose_answer_was_lost_but_which_landed_is_found_and_followed(world) -> None:
    engine, defender, notifier, clock = world
    defender.fail_initiate = CloudError("Azure failed: 503", "ServiceUnavailable", 503)
    defender.record_despite_failure = True

    request_id = approved(engine)

    assert status(engine, request_id) == RequestStatus.ACTIVE
    actions = [e.action for e in engine.store.audit_events(request_id)]
    assert actions.index("rule_intended") < actions.index("defender_initiate_found")


def test_an_initiate_that_never_landed_fails_only_after_the_settle_time(world) -> None:
    engine, defender, notifier, clock = world
    defender.fail_initiate = CloudError("Azure failed: 503", "ServiceUnavailable", 503)

    request_id = approved(engine)
    assert status(engine, request_id) == RequestStatus.OPENING
    engine.sweep()
    assert status(engine, request_id) == RequestStatus.OPENING  # it may still land

    clock.now += timedelta(seconds=61)
    engine.sweep()

    request = engine.store.get_request(request_id)
    assert request is not None and request.status == RequestStatus.FAILED
    assert "never received" in (request.failure_reason or "")
    [grant] = engine.grants_of(request_id)
    assert grant.state == GrantState.REMOVED


def test_a_refusal_from_defender_marks_nothing_opened_and_fails_at_once(world) -> None:
    engine, defender, notifier, clock = world
    defender.fail_initiate = CloudError("no", "AuthorizationFailed", 403)

    request_id = approved(engine)

    request = engine.store.get_request(request_id)
    assert request is not None and request.status == RequestStatus.FAILED
    assert "initiate/action" in (request.failure_reason or "")
    assert [g.state for g in engine.grants_of(request_id)] == [GrantState.REMOVED]


def test_a_vm_name_too_long_for_defender_fails_before_any_write(world) -> None:
    engine, defender, notifier, clock = world
    long_vm = "vm-" + "x" * 60
    engine.policies.policies = parse_policies({"policies": [{**POLICY, "vms": [long_vm]}]})

    request_id = approved(engine, long_vm)

    request = engine.store.get_request(request_id)
    assert request is not None and request.status == RequestStatus.FAILED
    assert "56 characters" in (request.failure_reason or "")
    assert defender.policies == {} and defender.initiates == []


def test_a_write_that_lost_another_vm_is_recorded(world) -> None:
    engine, defender, notifier, clock = world
    defender.policies["default"] = {
        "name": "default",
        "kind": "Basic",
        "properties": {
            "virtualMachines": [{"id": vm_id("vm-db01"), "ports": []}],
            "requests": [],
        },
    }
    defender.drop_on_put = "vm-db01"

    request_id = approved(engine)

    [written] = [
        e for e in engine.store.audit_events(request_id) if e.action == "defender_policy_written"
    ]
    assert written.detail["lost_vms"] == [vm_id("vm-db01")]


def test_defender_requests_cannot_be_extended(world) -> None:
    engine, defender, notifier, clock = world
    request_id = approved(engine)

    with pytest.raises(RequestRejected, match="cannot extend"):
        engine.extend(request_id, "U0REQ12345", timedelta(hours=2))


def test_defender_unreadable_after_initiate_leaves_the_request_opening_not_failed(world) -> None:
    engine, defender, notifier, clock = world
    defender.unreadable_after_initiate = True

    request_id = approved(engine)

    assert status(engine, request_id) == RequestStatus.OPENING  # it may well be open
    assert ("failed", request_id) not in notifier.events
    engine.sweep()
    assert status(engine, request_id) == RequestStatus.OPENING

    defender.unreadable_after_initiate = False
    engine.sweep()

    assert status(engine, request_id) == RequestStatus.ACTIVE
