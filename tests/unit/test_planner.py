from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jitcore.errors import PlacementError
from jitcore.planner import (
    AllowSpec,
    Rule,
    blocking_deny_priority,
    comparable,
    differences,
    plan_allow,
    rule_description,
)

END = datetime(2026, 12, 4, 18, 30, tzinfo=UTC)


def spec(**overrides: object) -> AllowSpec:
    values: dict[str, object] = {
        "request_id": 7,
        "vm_name": "vm-web01",
        "source_prefix": "203.0.113.7/32",
        "destination": "10.0.1.4",
        "ports": (22,),
        "protocol": "Tcp",
        "ends_at": END,
    }
    values.update(overrides)
    return AllowSpec(**values)  # type: ignore[arg-type]


def deny(priority: int, ports: tuple[str, ...] = ("22", "3389"), dest: str = "10.0.1.4") -> Rule:
    return Rule(
        name=f"jitbot-deny-{priority}",
        priority=priority,
        direction="Inbound",
        access="Deny",
        destination_prefixes=(dest,),
        destination_ports=ports,
        description="jitbot: JIT deny",
    )


def allow(name: str, priority: int, direction: str = "Inbound", port: str = "443") -> Rule:
    return Rule(
        name=name, priority=priority, direction=direction, access="Allow", destination_ports=(port,)
    )


def test_allow_goes_just_before_the_jit_deny() -> None:
    rule = plan_allow([allow("allow-https", 100), deny(1000)], spec())
    assert rule.priority == 999
    assert rule.access == "Allow" and rule.direction == "Inbound"
    assert rule.source_prefixes == ("203.0.113.7/32",)
    assert rule.destination_prefixes == ("10.0.1.4",)
    assert rule.destination_ports == ("22",)


def test_allow_skips_priorities_already_taken_in_the_same_direction() -> None:
    rules = [deny(1000), allow("a", 999), allow("b", 998), allow("out", 997, direction="Outbound")]
    assert plan_allow(rules, spec()).priority == 997


def test_allow_goes_before_the_first_deny_that_blocks_the_traffic() -> None:
    customer_deny = Rule(
        name="deny-ssh-everywhere",
        priority=500,
        direction="Inbound",
        access="Deny",
        destination_ports=("20-25",),
    )
    assert plan_allow([customer_deny, deny(1000)], spec()).priority == 499


def test_a_deny_for_other_ports_or_another_address_does_not_count_as_blocking() -> None:
    rules = [deny(300, ports=("80",)), deny(400, dest="10.0.9.9"), deny(1000)]
    assert blocking_deny_priority(rules, spec()) == 1000


def test_without_any_deny_the_allow_takes_the_last_custom_priority() -> None:
    assert plan_allow([allow("allow-https", 100)], spec()).priority == 4096


def test_no_free_priority_before_the_deny_is_refused_with_a_reason() -> None:
    rules = [deny(103)] + [allow(f"a{p}", p) for p in (100, 101, 102)]
    with pytest.raises(PlacementError, match="no free inbound priority"):
        plan_allow(rules, spec())


def test_a_full_nsg_is_refused_up_front() -> None:
    rules = [allow(f"r{i}", 100 + i, direction="Outbound") for i in range(1000)]
    with pytest.raises(PlacementError, match="limit is 1000"):
        plan_allow(rules, spec())


def test_ipv6_source_and_destination_are_placed_like_ipv4() -> None:
    six = spec(source_prefix="2001:db8::7/128", destination="fd00::4")
    rule = plan_allow([deny(1000, dest="fd00::4")], six)
    assert rule.priority == 999
    assert rule.source_prefixes == ("2001:db8::7/128",)


def test_rule_name_avoids_existing_names() -> None:
    existing = Rule(name="jitbot-allow-r7", priority=900, direction="Inbound", access="Allow")
    assert plan_allow([existing, deny(1000)], spec()).name == "jitbot-allow-r7-2"


def test_description_keeps_request_and_end_within_140_characters() -> None:
    text = rule_description(spec(vm_name="v" * 200, request_id=123456789))
    assert len(text) == 140
    assert text.startswith("jitbot r123456789 until 2026-12-04T18:30:00Z for vvv")


def test_rule_properties_round_trip_through_arm_json() -> None:
    rule = plan_allow([deny(1000)], spec(ports=(22, 3389)))
    arm = {"name": rule.name, "properties": rule.to_arm_properties()}
    assert Rule.from_arm(arm) == rule
    assert arm["properties"]["destinationPortRanges"] == ["22", "3389"]


def test_comparable_ignores_etags_and_provisioning_state() -> None:
    a = [
        {
            "name": "x",
            "etag": "1",
            "properties": {"priority": 100, "provisioningState": "Succeeded"},
        }
    ]
    b = [
        {"name": "x", "etag": "2", "properties": {"priority": 100, "provisioningState": "Updating"}}
    ]
    assert comparable(a) == comparable(b)
    assert differences(a, b) == []


def test_differences_name_added_removed_and_changed_rules() -> None:
    before = [
        {"name": "a", "properties": {"priority": 100}},
        {"name": "b", "properties": {"priority": 200}},
    ]
    after = [
        {"name": "a", "properties": {"priority": 101}},
        {"name": "c", "properties": {"priority": 300}},
    ]
    assert differences(before, after) == ["added c", "changed a", "removed b"]


priorities = st.sets(st.integers(min_value=100, max_value=4096), max_size=60)


@settings(max_examples=200, deadline=None)
@given(
    taken=priorities, deny_at=st.integers(min_value=101, max_value=4096), grants=st.integers(1, 20)
)
def test_any_sequence_of_grants_and_expiries_restores_the_nsg_and_never_collides(
    taken: set[int], deny_at: int, grants: int
) -> None:
    taken.discard(deny_at)
    initial = [allow(f"c{p}", p, port="8080") for p in sorted(taken)] + [deny(deny_at)]
    rules = list(initial)
    added = []
    for number in range(grants):
        try:
            rule = plan_allow(rules, spec(request_id=number))
        except PlacementError:
            break
        assert rule.priority < deny_at
        assert rule.priority not in {r.priority for r in rules if r.direction == "Inbound"}
        assert rule.name not in {r.name for r in rules}
        rules.append(rule)
        added.append(rule)
    for rule in reversed(added):
        rules.remove(rule)
    assert rules == initial


def test_the_deny_goes_after_existing_rules_that_cover_the_ports() -> None:
    from jitcore.planner import plan_deny

    customer = Rule(
        name="allow-ssh-from-vpn",
        priority=300,
        direction="Inbound",
        access="Allow",
        source_prefixes=("198.51.100.0/24",),
        destination_ports=("22",),
    )
    deny = plan_deny([customer, allow("allow-https", 100)], "vm-web01", "10.0.1.4", [22, 3389])
    assert deny.priority == 301
    assert deny.access == "Deny" and deny.destination_prefixes == ("10.0.1.4",)
    assert deny.destination_ports == ("22", "3389")
    assert deny.name == "jitbot-deny-vm-web01"


def test_without_covering_rules_the_deny_leaves_room_for_allows_before_it() -> None:
    from jitcore.planner import ALLOW_ROOM, plan_deny

    deny = plan_deny([allow("allow-https", 100)], "vm-web01", "10.0.1.4", [22])
    free_before = [p for p in range(100, deny.priority) if p != 100]
    assert len(free_before) == ALLOW_ROOM
    assert plan_allow([allow("allow-https", 100), deny], spec()).priority == deny.priority - 1


def test_deny_names_are_valid_for_any_vm_name() -> None:
    from jitcore.planner import deny_rule_name

    assert deny_rule_name("vm web/01") == "jitbot-deny-vm-web-01"
    assert len(deny_rule_name("v" * 200)) == 80


def test_allow_descriptions_are_parsed_back_to_request_and_end() -> None:
    from jitcore.planner import parse_allow_description

    assert parse_allow_description(rule_description(spec())) == (7, END)
    assert parse_allow_description("someone else's rule") is None
