"""Which actions each operation needs, and how long an answer is trusted."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from jitcore import rbac
from jitcore.access import (
    VIEW_ACTIONS,
    AccessChecker,
    AccessRefused,
    ClickReads,
    Operation,
    VmTarget,
    required_actions,
)
from jitcore.errors import CloudError
from tests.shared import shared_dir

SUB_ID = "00000000-0000-0000-0000-00000000a11c"
SUB = f"/subscriptions/{SUB_ID}"
RG = f"{SUB}/resourceGroups/rg-jit-demo"
VM_ID = f"{RG}/providers/Microsoft.Compute/virtualMachines/vm-web01"
USER = "a11ce000-0000-4000-8000-000000000001"
GROUP = "9a0c0000-0000-4000-8000-000000000021"


def builtin_role(name: str) -> rbac.RoleDefinition:
    roles = json.loads((shared_dir() / "azure-builtin-roles" / "roles.json").read_text())
    [role] = [r for r in roles if r["properties"]["roleName"] == name]
    return rbac.RoleDefinition.from_arm(role)


class FakeAuthorizer:
    """Grants what ``allowed`` says, recording each call."""

    def __init__(self) -> None:
        self.allowed = True
        self.calls: list[tuple[str, tuple[str, ...], tuple[str, ...], bool]] = []
        self.shared: list[ClickReads | None] = []

    def decide(
        self,
        resource_id: str,
        object_id: str,
        group_ids: Iterable[str],
        required_actions: Iterable[str],
        *,
        fresh: bool = False,
        shared: ClickReads | None = None,
    ) -> rbac.AccessDecision:
        actions = tuple(required_actions)
        self.calls.append((resource_id, tuple(group_ids), actions, fresh))
        self.shared.append(shared)
        held, missing = (actions, ()) if self.allowed else ((), actions)
        return rbac.AccessDecision(self.allowed, resource_id, held, missing)


class FakeGroups:
    def __init__(self) -> None:
        self.calls = 0

    def transitive_group_ids(self, object_id: str) -> tuple[str, ...]:
        self.calls += 1
        return (GROUP,)


@dataclass
class FakeNetwork:
    public_ips: tuple[str, ...] = ("20.50.60.70",)
    calls: int = 0

    def network_of(self, vm: str) -> object:
        self.calls += 1

        @dataclass
        class Located:
            vm_name: str
            vm_id: str
            public_ips: tuple[str, ...]

        return Located(vm, VM_ID, self.public_ips)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def checker(ttl: float = 300.0) -> tuple[AccessChecker, FakeAuthorizer, FakeGroups, Clock]:
    authorizer, groups, clock = FakeAuthorizer(), FakeGroups(), Clock()
    access = AccessChecker(authorizer, groups, FakeNetwork(), SUB_ID, ttl=ttl, clock=clock)
    return access, authorizer, groups, clock


VM = VmTarget("vm-web01", VM_ID, has_public_ip=True)


def test_requesting_needs_public_ip_read_only_when_the_vm_has_a_public_ip() -> None:
    assert rbac.PUBLIC_IP_READ_ACTION in required_actions(Operation.REQUEST, True)
    assert required_actions(Operation.REQUEST, False) == rbac.REQUEST_ACTIONS


def test_configuring_is_checked_at_the_subscription_whatever_the_vm() -> None:
    access, authorizer, _, _ = checker()

    access.check(USER, Operation.CONFIGURE, VM)

    [(scope, _, actions, _)] = authorizer.calls
    assert (scope, actions) == (SUB, rbac.CONFIGURE_ACTIONS)


def test_the_users_groups_are_passed_with_the_user() -> None:
    access, authorizer, _, _ = checker()

    access.check(USER, Operation.REQUEST, VM)

    assert authorizer.calls[0][1] == (GROUP,)


def test_a_revoked_role_is_noticed_once_the_cache_time_has_passed() -> None:
    access, authorizer, groups, clock = checker(ttl=300)
    assert access.check(USER, Operation.REQUEST, VM).allowed
    authorizer.allowed = False

    clock.now += 299
    assert access.check(USER, Operation.REQUEST, VM).allowed
    clock.now += 2
    assert not access.check(USER, Operation.REQUEST, VM).allowed
    assert (len(authorizer.calls), groups.calls) == (2, 2)


def test_a_fresh_check_reads_azure_again_within_the_cache_time() -> None:
    access, authorizer, groups, _ = checker()
    access.check(USER, Operation.REQUEST, VM)
    authorizer.allowed = False

    with pytest.raises(AccessRefused) as refused:
        access.require(USER, Operation.REQUEST, VM, fresh=True)

    assert refused.value.decision.missing == required_actions(Operation.REQUEST, True)
    assert authorizer.calls[-1][3] is True and groups.calls == 2
    assert not access.check(USER, Operation.REQUEST, VM).allowed


def test_a_zero_ttl_caches_nothing() -> None:
    access, authorizer, _, _ = checker(ttl=0)

    access.check(USER, Operation.REQUEST, VM)
    access.check(USER, Operation.REQUEST, VM)

    assert len(authorizer.calls) == 2


def test_the_vm_lookup_is_cached_like_decisions() -> None:
    network = FakeNetwork(public_ips=())
    access = AccessChecker(FakeAuthorizer(), FakeGroups(), network, SUB_ID, ttl=60)

    first = access.vm("vm-web01")
    access.vm("VM-WEB01")

    assert first == VmTarget("vm-web01", VM_ID, has_public_ip=False)
    assert network.calls == 1


def assignment(role: rbac.RoleDefinition) -> rbac.RoleAssignment:
    return rbac.RoleAssignment(
        id=f"{RG}/providers/Microsoft.Authorization/roleAssignments/1",
        scope=RG,
        role_definition_id=role.id,
        principal_id=USER,
    )


@pytest.mark.parametrize(
    ("role", "reads", "requests"),
    [
        pytest.param("Reader", True, False, id="reader"),
        pytest.param("Security Reader", True, False, id="security-reader"),
        pytest.param("Virtual Machine Contributor", False, False, id="vm-contributor"),
        pytest.param("Contributor", True, True, id="contributor"),
    ],
)
def test_reader_and_security_reader_can_read_jit_status_but_not_request(
    role: str, reads: bool, requests: bool
) -> None:
    definition = builtin_role(role)

    def holds(actions: tuple[str, ...]) -> bool:
        decision = rbac.evaluate(VM_ID, [USER], [assignment(definition)], [definition], [], actions)
        return decision.allowed

    assert holds(VIEW_ACTIONS) is reads
    assert holds(required_actions(Operation.REQUEST, True)) is requests


def test_the_checks_of_one_click_read_each_principal_afresh_and_share_one_memo() -> None:
    access, authorizer, groups, _ = checker()
    access.check(USER, Operation.REQUEST, VM)  # cached, yet not used by the click
    other = "b0b00000-0000-4000-8000-000000000002"

    answers = access.check_fresh_together(
        [(USER, Operation.REQUEST, VM), (other, Operation.REQUEST, VM)]
    )

    assert [a.allowed for a in answers if isinstance(a, rbac.AccessDecision)] == [True, True]
    assert groups.calls == 3 and [call[3] for call in authorizer.calls[1:]] == [True, True]
    first, second = authorizer.shared[1:]
    assert isinstance(first, ClickReads) and first is second
    access.close()


def test_a_new_click_gets_a_new_memo_so_nothing_is_reused_between_clicks() -> None:
    access, authorizer, _, _ = checker()

    access.check_fresh_together([(USER, Operation.REQUEST, VM)])
    access.check_fresh_together([(USER, Operation.REQUEST, VM)])

    assert len(authorizer.calls) == 2 and authorizer.shared[0] is not authorizer.shared[1]
    access.close()


def test_a_failed_check_of_one_principal_is_returned_not_raised() -> None:
    access, authorizer, _, _ = checker()

    def failing(*args: object, **kwargs: object) -> rbac.AccessDecision:
        raise CloudError("Azure said no", code="AuthorizationFailed")

    authorizer.decide = failing  # type: ignore[method-assign]

    [answer] = access.check_fresh_together([(USER, Operation.REQUEST, VM)])

    assert isinstance(answer, CloudError) and answer.code == "AuthorizationFailed"
    access.close()


def test_click_reads_read_a_key_once_for_concurrent_callers() -> None:
    reads = ClickReads()
    started, release = threading.Event(), threading.Event()
    count = 0

    def slow_read() -> str:
        nonlocal count
        count += 1
        started.set()
        release.wait(5)
        return "denies"

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(reads.get, ("deny", "scope"), slow_read)
        started.wait(5)
        second = pool.submit(reads.get, ("deny", "scope"), slow_read)
        release.set()
        assert (first.result(5), second.result(5)) == ("denies", "denies")
    assert count == 1
    assert reads.get(("deny", "other scope"), lambda: "other") == "other"


def test_click_reads_give_every_caller_the_error_of_a_failed_read() -> None:
    reads = ClickReads()
    attempts = []

    def failing() -> str:
        attempts.append(1)
        raise CloudError("throttled", code="TooManyRequests")

    for _ in range(2):
        with pytest.raises(CloudError, match="throttled"):
            reads.get("key", failing)
    assert len(attempts) == 1
