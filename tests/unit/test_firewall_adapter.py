"""FirewallGateway: jitbot's DNAT rules on a classic Azure Firewall, against the ARM stand-in
(real azure-mgmt-network client), and the pure changes it makes to a firewall."""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from jitcore.azure.clients import AzureTarget, StaticTokenCredential
from jitcore.azure.firewall import (
    JIT_COLLECTION,
    DnatRule,
    FirewallGateway,
    dnat_description,
    dnat_rule_name,
    free_nat_priority,
    policy_managed_message,
    with_dnat,
    without_dnat,
)
from jitcore.errors import CloudError, PlacementError
from sandbox.arm.server import ArmServer
from sandbox.arm.state import DEFAULT_SEED
from sandbox.arm.testing import http_session

NETWORK = "2025-05-01"
FIREWALL_SEED = DEFAULT_SEED.parent / "firewall.json"
PUBLIC_IP = "20.60.70.80"


def rule(request_id: int = 7, port: int = 50022, source: str = "203.0.113.7") -> DnatRule:
    return DnatRule(
        name=dnat_rule_name(request_id, port),
        source_prefix=source,
        public_ip=PUBLIC_IP,
        public_port=port,
        private_ip="10.2.1.4",
        private_port=22,
        protocol="tcp",
        description=dnat_description(request_id, datetime(2030, 1, 1, 12, tzinfo=UTC), "vm-app01"),
    )


class Sleeps(list[float]):
    """Records the waits the gateway asks for instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def arm(tmp_path: Path) -> Iterator[ArmServer]:
    with ArmServer(seed=FIREWALL_SEED, workdir=tmp_path) as server:
        yield server


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def gateway_for(arm: ArmServer, sleep: Any = None, **options: Any) -> FirewallGateway:
    # retry_total=0: azure-core retries nothing itself, so the gateway's own loop is what
    # these tests see.
    target = AzureTarget(
        subscription_id=arm.subscription_id,
        credential=StaticTokenCredential("sandbox-token"),
        base_url=arm.url,
        ca_bundle=arm.ca_path,
        polling_interval=0,
        retry_total=0,
        client_kwargs={"use_env_settings": False},
    )
    return FirewallGateway(target, sleep=Sleeps() if sleep is None else sleep, **options)


@pytest.fixture
def gateway(arm: ArmServer, sleeps: Sleeps) -> Iterator[FirewallGateway]:
    gateway = gateway_for(arm, sleeps)
    yield gateway
    gateway.close()


def firewall_id(arm: ArmServer, name: str = "fw-classic01") -> str:
    return (
        f"/subscriptions/{arm.subscription_id}/resourceGroups/rg-jit-demo"
        f"/providers/Microsoft.Network/azureFirewalls/{name}"
    )


def snapshot(arm: ArmServer, name: str = "fw-classic01") -> dict[str, Any]:
    """The firewall as ARM JSON without what Azure changes on its own (ETags, states)."""
    with http_session(arm) as http:
        body = http.get(f"{arm.url}{firewall_id(arm, name)}", params={"api-version": NETWORK})
    return _without_volatile(body.json())


def _without_volatile(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            key: _without_volatile(item)
            for key, item in value.items()
            if key not in ("etag", "provisioningState")
        }
    if isinstance(value, list):
        return [_without_volatile(item) for item in value]
    return value


def puts(arm: ArmServer) -> list[tuple[int, str | None]]:
    return [(e["status"], e["code"]) for e in arm.requests() if e["method"] == "PUT"]


# ---------------------------------------------------------------------- against the stand-in


def test_describe_gives_addresses_and_management_mode(arm: ArmServer, gateway) -> None:
    classic = gateway.describe(firewall_id(arm))
    managed = gateway.describe(firewall_id(arm, "fw-managed01"))

    assert (classic.name, classic.private_ip, classic.public_ips) == (
        "fw-classic01",
        "10.1.0.4",
        (PUBLIC_IP,),
    )
    assert classic.policy_managed is False and classic.etag.startswith('W/"')
    assert (managed.private_ip, managed.public_ips, managed.policy_managed) == (
        "10.3.0.4",
        ("20.60.70.81",),
        True,
    )


def test_add_then_remove_returns_the_firewall_exactly_to_its_previous_state(
    arm: ArmServer, gateway
) -> None:
    before = snapshot(arm)
    gateway.add_dnat(firewall_id(arm), rule())
    during = snapshot(arm)
    removed = gateway.remove_dnat(firewall_id(arm), rule().name)

    assert removed is True
    assert snapshot(arm) == before
    collections = during["properties"]["natRuleCollections"]
    assert [c["name"] for c in collections] == ["customer-dnat", JIT_COLLECTION]
    assert collections[0] == before["properties"]["natRuleCollections"][0]
    assert collections[1]["properties"]["priority"] == 65000
    assert collections[1]["properties"]["action"] == {"type": "Dnat"}
    assert collections[1]["properties"]["rules"] == [rule().to_arm()]
    assert (
        during["properties"]["networkRuleCollections"]
        == (before["properties"]["networkRuleCollections"])
    )


def test_a_write_is_followed_to_succeeded_and_changes_the_etag(arm: ArmServer, gateway) -> None:
    etag = gateway.describe(firewall_id(arm)).etag
    gateway.add_dnat(firewall_id(arm), rule())
    polled = [e for e in arm.requests() if "/operations/" in e["path"]]

    assert puts(arm) == [(200, None)]
    assert polled and snapshot(arm)["properties"]["natRuleCollections"][1]["name"] == (
        JIT_COLLECTION
    )
    assert gateway.describe(firewall_id(arm)).etag != etag


def test_second_rule_joins_the_collection_and_first_removal_keeps_it(
    arm: ArmServer, gateway
) -> None:
    gateway.add_dnat(firewall_id(arm), rule(7))
    gateway.add_dnat(firewall_id(arm), rule(8, port=50023))
    gateway.remove_dnat(firewall_id(arm), rule(7).name)

    assert [r["name"] for r in gateway.dnat_rules(firewall_id(arm))] == [rule(8, 50023).name]


def test_adding_the_same_rule_twice_writes_once(arm: ArmServer, gateway) -> None:
    gateway.add_dnat(firewall_id(arm), rule())
    gateway.add_dnat(firewall_id(arm), rule())

    assert len(puts(arm)) == 1


def test_removing_a_rule_that_is_not_there_writes_nothing(arm: ArmServer, gateway) -> None:
    assert gateway.remove_dnat(firewall_id(arm), "jitbot-dnat-r99-50022") is False
    assert puts(arm) == []


def test_foreign_write_between_read_and_write_is_survived_and_kept(
    arm: ArmServer, gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Someone edits the firewall after the gateway read it: the gateway's PUT gets 412, it
    reads again and applies its change on top of theirs."""
    operations = gateway._client.azure_firewalls
    real_get = operations.get
    calls = {"n": 0}

    def get_then_someone_else_writes(*args: Any, **kwargs: Any) -> Any:
        result = real_get(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 1:
            _foreign_write(arm)
        return result

    monkeypatch.setattr(operations, "get", get_then_someone_else_writes)
    gateway.add_dnat(firewall_id(arm), rule())
    collections = snapshot(arm)["properties"]["natRuleCollections"]

    assert (412, "PreconditionFailed") in puts(arm)
    assert [c["name"] for c in collections] == ["customer-dnat", "customer-extra", JIT_COLLECTION]
    assert collections[2]["properties"]["rules"] == [rule().to_arm()]


def _foreign_write(arm: ArmServer) -> None:
    """A colleague adds a NAT collection through the portal, and it completes."""
    url = f"{arm.url}{firewall_id(arm)}?api-version={NETWORK}"
    with http_session(arm) as http:
        body = http.get(url).json()
        body["properties"]["natRuleCollections"].append(
            {
                "name": "customer-extra",
                "properties": {
                    "priority": 210,
                    "action": {"type": "Dnat"},
                    "rules": [
                        {
                            "name": "app01-http",
                            "sourceAddresses": ["*"],
                            "destinationAddresses": [PUBLIC_IP],
                            "destinationPorts": ["80"],
                            "protocols": ["TCP"],
                            "translatedAddress": "10.2.1.4",
                            "translatedPort": "80",
                        }
                    ],
                },
            }
        )
        response = http.put(url, json=body)
        assert response.status_code == 200, response.text
        status_url = response.headers["Azure-AsyncOperation"]
        while http.get(status_url).json()["status"] == "InProgress":
            pass


def test_a_firewall_that_keeps_changing_is_given_up_with_412(arm: ArmServer, sleeps) -> None:
    arm.add_fault(method="PUT", path_contains="/azureFirewalls/", status=412, times=3)
    gateway = gateway_for(arm, sleeps, rereads=3)

    with pytest.raises(CloudError) as caught:
        gateway.add_dnat(firewall_id(arm), rule())
    gateway.close()

    assert caught.value.status == 412
    assert "changed under jitbot 3 times" in str(caught.value)
    assert len(puts(arm)) == 3


def test_policy_managed_firewall_is_refused_with_the_reason(arm: ArmServer, gateway) -> None:
    managed = rule()
    managed = DnatRule(**{**managed.__dict__, "public_ip": "20.60.70.81"})

    with pytest.raises(PlacementError) as caught:
        gateway.add_dnat(firewall_id(arm, "fw-managed01"), managed)

    assert str(caught.value) == (
        "fw-managed01 is managed by Azure Firewall Manager (firewall policy fwpol-hub); jitbot "
        "only writes classic rule collections, so it cannot open access through it"
    )
    assert puts(arm) == []
    assert gateway.remove_dnat(firewall_id(arm, "fw-managed01"), managed.name) is False


def test_public_ip_the_firewall_does_not_own_is_refused(arm: ArmServer, gateway) -> None:
    foreign = DnatRule(**{**rule().__dict__, "public_ip": "20.50.60.70"})

    with pytest.raises(PlacementError, match="20.50.60.70 is not a public IP address of"):
        gateway.add_dnat(firewall_id(arm), foreign)
    assert puts(arm) == []


def test_port_already_forwarded_by_a_customer_rule_is_refused(arm: ArmServer, gateway) -> None:
    https = DnatRule(**{**rule().__dict__, "public_port": 443, "name": "jitbot-dnat-r7-443"})

    with pytest.raises(PlacementError, match="already forwarded by rule app01-https"):
        gateway.add_dnat(firewall_id(arm), https)
    assert puts(arm) == []


def test_throttled_write_is_retried_after_retry_after(arm: ArmServer, gateway, sleeps) -> None:
    arm.add_fault(
        method="PUT", path_contains="/azureFirewalls/", status=429, retry_after=3, times=1
    )
    gateway.add_dnat(firewall_id(arm), rule())

    assert puts(arm) == [(429, "TooManyRequests"), (200, None)]
    assert sleeps == [3.0]


def test_another_operation_in_progress_is_retried_with_backoff(
    arm: ArmServer, gateway, sleeps
) -> None:
    arm.add_fault(
        method="PUT",
        path_contains="/azureFirewalls/",
        status=409,
        code="AnotherOperationInProgress",
        times=2,
    )
    gateway.add_dnat(firewall_id(arm), rule())

    assert puts(arm) == [(409, "AnotherOperationInProgress")] * 2 + [(200, None)]
    assert sleeps == [0.5, 1.0]


def test_server_error_on_read_is_retried(arm: ArmServer, gateway, sleeps) -> None:
    arm.add_fault(method="GET", path_contains="/azureFirewalls/fw-classic01", status=503, times=1)

    assert gateway.describe(firewall_id(arm)).private_ip == "10.1.0.4"
    assert sleeps == [0.5]


def test_a_running_foreign_operation_is_waited_out_then_the_etag_refreshed(
    tmp_path: Path,
) -> None:
    """A real 409 while someone else's write runs is waited out, then the write goes in."""
    with ArmServer(seed=FIREWALL_SEED, workdir=tmp_path, lro_timeout=0.2) as arm:
        url = f"{arm.url}{firewall_id(arm)}?api-version={NETWORK}"
        gateway = gateway_for(arm, _real_sleep, backoff=0.1)
        with http_session(arm) as http:
            assert http.put(url, json=http.get(url).json()).status_code == 200
        gateway.add_dnat(firewall_id(arm), rule())
        gateway.close()
        codes = [code for _, code in puts(arm)]

    assert "AnotherOperationInProgress" in codes
    assert codes[-1] is None


def _real_sleep(seconds: float) -> None:
    threading.Event().wait(seconds)


def test_failed_operation_is_reported_and_the_firewall_left_as_it_was(
    arm: ArmServer, gateway
) -> None:
    before = snapshot(arm)
    arm.add_fault(
        method="PUT",
        path_contains="/azureFirewalls/",
        fail_on_poll=True,
        code="InvalidRequest",
        message="Firewall update failed (injected).",
    )

    with pytest.raises(CloudError, match="injected"):
        gateway.add_dnat(firewall_id(arm), rule())
    assert snapshot(arm) == before


def test_concurrent_grants_on_one_firewall_are_both_applied(arm: ArmServer) -> None:
    gateways = [gateway_for(arm, _real_sleep, backoff=0.05) for _ in range(2)]
    errors: list[BaseException] = []

    def add(gateway: FirewallGateway, request_id: int) -> None:
        try:
            gateway.add_dnat(firewall_id(arm), rule(request_id, port=50000 + request_id))
        except BaseException as exc:  # pragma: no cover (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(gateways[i % 2], i)) for i in range(1, 5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    names = sorted(r["name"] for r in gateways[0].dnat_rules(firewall_id(arm)))
    for gateway in gateways:
        gateway.close()

    assert errors == []
    assert names == sorted(rule(i, port=50000 + i).name for i in range(1, 5))


def test_lock_for_is_one_lock_per_firewall_whatever_the_casing(arm: ArmServer, gateway) -> None:
    one = gateway.lock_for(firewall_id(arm))

    assert gateway.lock_for(firewall_id(arm).upper()) is one
    assert gateway.lock_for(firewall_id(arm, "fw-managed01")) is not one


def test_a_caller_holding_the_lock_can_still_write(arm: ArmServer, gateway) -> None:
    with gateway.lock_for(firewall_id(arm)):
        gateway.add_dnat(firewall_id(arm), rule())
        assert gateway.remove_dnat(firewall_id(arm), rule().name) is True


# ---------------------------------------------------------------------- pure changes


FIREWALL: dict[str, Any] = {
    "name": "fw",
    "properties": {
        "natRuleCollections": [
            {
                "name": "customer",
                "properties": {
                    "priority": 65000,
                    "action": {"type": "Dnat"},
                    "rules": [
                        {
                            "name": "web",
                            "sourceAddresses": ["198.51.100.0/24"],
                            "destinationAddresses": [PUBLIC_IP],
                            "destinationPorts": ["50022"],
                            "protocols": ["TCP"],
                            "translatedAddress": "10.2.1.5",
                            "translatedPort": "22",
                        }
                    ],
                },
            }
        ],
        "networkRuleCollections": [{"name": "net", "properties": {"priority": 65000}}],
    },
}


def test_new_collection_takes_the_highest_free_nat_priority() -> None:
    body = with_dnat(copy.deepcopy(FIREWALL), rule())

    assert body is not None
    ours = body["properties"]["natRuleCollections"][1]
    assert (ours["name"], ours["properties"]["priority"]) == (JIT_COLLECTION, 64999)
    assert (
        body["properties"]["natRuleCollections"][0]
        == FIREWALL["properties"]["natRuleCollections"][0]
    )
    assert (
        body["properties"]["networkRuleCollections"]
        == FIREWALL["properties"]["networkRuleCollections"]
    )


def test_with_dnat_does_not_change_its_input() -> None:
    original = copy.deepcopy(FIREWALL)
    with_dnat(original, rule())

    assert original == FIREWALL


def test_changed_rule_of_the_same_name_replaces_the_old_one() -> None:
    first = with_dnat(copy.deepcopy(FIREWALL), rule())
    assert first is not None
    changed = DnatRule(**{**rule().__dict__, "private_port": 2222})
    second = with_dnat(first, changed)

    assert second is not None
    assert second["properties"]["natRuleCollections"][1]["properties"]["rules"] == [
        changed.to_arm()
    ]
    assert with_dnat(second, changed) is None


def test_without_dnat_removes_the_collection_with_its_last_rule() -> None:
    added = with_dnat(copy.deepcopy(FIREWALL), rule())
    assert added is not None

    assert without_dnat(added, rule().name) == FIREWALL
    assert without_dnat(FIREWALL, rule().name) is None
    assert without_dnat(added, "jitbot-dnat-r1-1") is None


def test_overlapping_source_on_a_forwarded_port_conflicts_and_disjoint_does_not() -> None:
    inside = DnatRule(**{**rule().__dict__, "source_prefix": "198.51.100.7"})
    outside = rule()

    with pytest.raises(PlacementError, match="rule web in collection customer"):
        with_dnat(copy.deepcopy(FIREWALL), inside)
    assert with_dnat(copy.deepcopy(FIREWALL), outside) is not None


def test_free_nat_priority_fails_only_when_every_priority_is_taken() -> None:
    every = [{"properties": {"priority": p}} for p in range(100, 65001)]

    assert free_nat_priority(every[:-1]) == 65000
    with pytest.raises(PlacementError):
        free_nat_priority(every)


def test_rule_names_and_descriptions_follow_the_nsg_convention() -> None:
    ends = datetime(2030, 1, 1, 13, 30, tzinfo=timezone(timedelta(hours=1)))

    assert dnat_rule_name(42, 50022) == "jitbot-dnat-r42-50022"
    assert dnat_description(42, ends, "vm-app01") == (
        "jitbot r42 until 2030-01-01T12:30:00Z for vm-app01"
    )
    assert len(dnat_description(42, ends, "v" * 300)) == 140


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        pytest.param({"name": "x" * 81}, "not a valid firewall rule name", id="name-81"),
        pytest.param({"name": "-bad"}, "not a valid firewall rule name", id="name-dash"),
        pytest.param({"protocol": "icmp"}, "TCP or UDP", id="protocol"),
        pytest.param({"public_port": 0}, "outside 1-65535", id="port-0"),
        pytest.param({"private_port": 65536}, "outside 1-65535", id="port-65536"),
        pytest.param({"description": "d" * 141}, "longer than 140", id="description"),
    ],
)
def test_invalid_dnat_rules_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(PlacementError, match=message):
        DnatRule(**{**rule().__dict__, **changes})


def test_protocol_is_stored_upper_case() -> None:
    assert rule().protocol == "TCP"
    assert rule().to_arm()["protocols"] == ["TCP"]


def test_policy_message_names_firewall_and_policy() -> None:
    policy = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/firewallPolicies/p1"

    assert policy_managed_message("fw1", policy).startswith(
        "fw1 is managed by Azure Firewall Manager (firewall policy p1);"
    )
