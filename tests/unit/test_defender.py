"""The pure rules of Defender for Cloud JIT mode (jitcore.defender) and its policy checks."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta

import pytest

from jitcore.defender import (
    DefenderNameTooLong,
    PortState,
    check_defender_source,
    choose_policy,
    entry_matches,
    explain_error,
    find_request,
    initiate_body,
    iso_duration,
    justification,
    lost_entries,
    merged_body,
    parse_iso_duration,
    parse_utc,
    plan_refusal,
    request_marker,
    status_of,
    utc_text,
    vm_entry,
)
from jitcore.errors import CloudError, InvalidSource
from jitcore.policy import PolicyError, check_request, parse_policies

RG = "/subscriptions/sub/resourceGroups/rg-jit-demo/providers/Microsoft.Compute/virtualMachines"
WEB = f"{RG}/vm-web01"
DB = f"{RG}/vm-db01"


def policy_json(name: str, *vm_ids: str, requests: list | None = None) -> dict:
    return {
        "id": f"/subscriptions/sub/resourceGroups/rg-jit-demo/providers/Microsoft.Security"
        f"/locations/westeurope/jitNetworkAccessPolicies/{name}",
        "name": name,
        "kind": "Basic",
        "location": "westeurope",
        "properties": {
            "virtualMachines": [
                {
                    "id": vm_id,
                    "ports": [
                        {
                            "number": 3389,
                            "protocol": "*",
                            "allowedSourceAddressPrefix": "*",
                            "maxRequestAccessDuration": "PT3H",
                        }
                    ],
                }
                for vm_id in vm_ids
            ],
            "requests": requests or [],
            "provisioningState": "Succeeded",
        },
    }


WANTED = vm_entry(WEB, [(22, "Tcp", timedelta(hours=2))], [])


# -- which policy ----------------------------------------------------------------------


def test_the_policy_that_lists_the_vm_is_found_whatever_its_name() -> None:
    listed = [policy_json("default", DB), policy_json("ops-jit", WEB.upper())]

    name, found = choose_policy(listed, WEB, "vm-web01")

    assert name == "ops-jit"
    assert found is listed[1]


def test_a_vm_not_listed_joins_the_existing_policy_of_its_group_and_region() -> None:
    listed = [policy_json("team-policy", DB)]

    assert choose_policy(listed, WEB, "vm-web01") == ("team-policy", listed[0])


def test_without_any_policy_a_new_one_named_default_is_chosen() -> None:
    assert choose_policy([], WEB, "vm-web01") == ("default", None)


def test_policy_name_and_vm_name_stay_within_56_characters() -> None:
    long_name = "p" * 50
    listed = [policy_json(long_name, DB)]

    name, found = choose_policy(listed, WEB, "vm-web01")

    assert (name, found) == ("default", None)
    assert len(name) + len("vm-web01") <= 56


def test_a_vm_name_too_long_for_any_policy_name_is_refused() -> None:
    with pytest.raises(DefenderNameTooLong, match="56 characters"):
        choose_policy([], WEB, "v" * 56)


# -- read-modify-write -----------------------------------------------------------------


def test_merge_adds_the_vm_and_keeps_every_other_vm_entry_and_the_history() -> None:
    history = [{"virtualMachines": [], "startTimeUtc": "2026-01-01T00:00:00Z", "requestor": "x"}]
    existing = policy_json("default", DB, requests=history)
    before = copy.deepcopy(existing)

    body = merged_body(existing, WANTED)

    machines = body["properties"]["virtualMachines"]
    assert [m["id"] for m in machines] == [DB, WEB]
    assert machines[0] == before["properties"]["virtualMachines"][0]
    assert body["properties"]["requests"] == history
    assert body["kind"] == "Basic"
    assert "provisioningState" not in body["properties"]
    assert existing == before  # the read copy is not changed


def test_merge_replaces_only_the_vms_ports_and_keeps_its_other_fields() -> None:
    existing = policy_json("default", DB, WEB)
    existing["properties"]["virtualMachines"][1]["publicIpAddress"] = "20.1.2.3"

    body = merged_body(existing, WANTED)

    web = body["properties"]["virtualMachines"][1]
    assert web["ports"] == WANTED["ports"]
    assert web["publicIpAddress"] == "20.1.2.3"
    assert len(body["properties"]["virtualMachines"]) == 2


def test_a_write_that_dropped_another_vm_is_detected() -> None:
    before = policy_json("default", DB)
    after = policy_json("default", WEB)

    assert lost_entries(before, after) == [DB]
    assert lost_entries(before, merged_body(before, WANTED)) == []


def test_an_entry_already_matching_the_jitbot_policy_needs_no_write() -> None:
    current = {
        "id": WEB,
        "ports": [
            {
                "number": 22,
                "protocol": "TCP",
                "allowedSourceAddressPrefix": "*",
                "maxRequestAccessDuration": "PT120M",
            }
        ],
    }

    assert entry_matches(current, WANTED)
    assert not entry_matches(None, WANTED)
    longer = vm_entry(WEB, [(22, "Tcp", timedelta(hours=3))], [])
    assert not entry_matches(current, longer)


def test_vm_entry_uses_defenders_forms_for_protocol_sources_and_durations() -> None:
    one = vm_entry(WEB, [(22, "Tcp", timedelta(minutes=90))], ["203.0.113.7/32"])
    many = vm_entry(WEB, [(53, "Udp", timedelta(hours=24))], ["198.51.100.0/24", "2001:db8::/48"])
    anyone = vm_entry(WEB, [(3389, "*", timedelta(minutes=5))], [])

    assert one["ports"][0] == {
        "number": 22,
        "protocol": "TCP",
        "maxRequestAccessDuration": "PT1H30M",
        "allowedSourceAddressPrefix": "203.0.113.7",
    }
    assert many["ports"][0]["protocol"] == "UDP"
    assert many["ports"][0]["allowedSourceAddressPrefixes"] == ["198.51.100.0/24", "2001:db8::/48"]
    assert many["ports"][0]["maxRequestAccessDuration"] == "PT24H"
    assert anyone["ports"][0]["allowedSourceAddressPrefix"] == "*"
    assert anyone["ports"][0]["protocol"] == "*"


# -- sources ---------------------------------------------------------------------------


def test_any_source_is_accepted_when_the_policy_allows_any() -> None:
    check_defender_source("203.0.113.7/32", [], "vm-web01", 24, 48)


def test_a_source_equal_to_an_allowed_prefix_is_accepted() -> None:
    check_defender_source("198.51.100.0/24", ["198.51.100.0/24"], "vm-web01", 24, 48)
    check_defender_source("203.0.113.7/32", ["203.0.113.7/32"], "vm-web01", 24, 48)


def test_a_single_address_inside_an_allowed_range_is_refused_with_the_range_to_ask() -> None:
    with pytest.raises(InvalidSource) as caught:
        check_defender_source("198.51.100.7/32", ["198.51.100.0/24"], "vm-web01", 24, 48)

    assert "single address inside an allowed range" in caught.value.message
    assert "request `from 198.51.100.0/24` instead" in caught.value.message


def test_a_smaller_range_inside_an_allowed_range_is_refused_too() -> None:
    with pytest.raises(InvalidSource, match="a range inside an allowed range"):
        check_defender_source("198.51.100.0/28", ["198.51.100.0/24"], "vm-web01", 24, 48)


def test_an_allowed_range_wider_than_the_policy_lets_anyone_request_says_to_ask_an_admin() -> None:
    with pytest.raises(InvalidSource, match="ask an admin"):
        check_defender_source("10.1.2.3/32", ["10.0.0.0/8"], "vm-web01", 24, 48)


def test_a_source_outside_every_allowed_prefix_lists_them() -> None:
    with pytest.raises(InvalidSource, match="198.51.100.0/24"):
        check_defender_source("203.0.113.7/32", ["198.51.100.0/24"], "vm-web01", 24, 48)


# -- initiate --------------------------------------------------------------------------


def test_initiate_always_sends_the_requesters_source_and_a_justification_naming_people() -> None:
    ends = datetime(2026, 12, 4, 20, 0, 0, 123456, tzinfo=UTC)
    why = justification(7, "U0REQ12345", "U0APPROVR1", "deploy")

    body = initiate_body(WEB, [22, 3389], "203.0.113.7/32", ends, why)

    ports = body["virtualMachines"][0]["ports"]
    assert [p["allowedSourceAddressPrefix"] for p in ports] == ["203.0.113.7", "203.0.113.7"]
    assert ports[0]["endTimeUtc"] == "2026-12-04T20:00:00.1234560Z"
    assert body["justification"].startswith(request_marker(7))
    assert "U0REQ12345" in body["justification"] and "U0APPROVR1" in body["justification"]
    range_body = initiate_body(WEB, [22], "198.51.100.0/24", ends, why)
    assert range_body["virtualMachines"][0]["ports"][0]["allowedSourceAddressPrefix"] == (
        "198.51.100.0/24"
    )


# -- follow-up -------------------------------------------------------------------------


def defender_request(*ports: tuple[int, str, str], started: str, why: str = "") -> dict:
    return {
        "virtualMachines": [
            {
                "id": WEB,
                "ports": [
                    {
                        "number": number,
                        "allowedSourceAddressPrefix": "203.0.113.7",
                        "endTimeUtc": "2026-12-04T20:00:00Z",
                        "status": status,
                        "statusReason": reason,
                    }
                    for number, status, reason in ports
                ],
            }
        ],
        "startTimeUtc": started,
        "requestor": "jitbot",
        "justification": why,
    }


@pytest.mark.parametrize(
    ("statuses", "state", "reason"),
    [
        pytest.param(
            [(22, "Initiating", "UserRequested")], PortState.OPENING, None, id="initiating"
        ),
        pytest.param([(22, "Initiated", "UserRequested")], PortState.OPEN, None, id="initiated"),
        pytest.param(
            [(22, "Initiated", "UserRequested"), (3389, "Initiating", "UserRequested")],
            PortState.OPENING,
            None,
            id="partly-initiated",
        ),
        pytest.param([(22, "Revoked", "Expired")], PortState.CLOSED, "expired", id="expired"),
        pytest.param(
            [(22, "Revoked", "UserRequested")], PortState.CLOSED, "revoked", id="user-requested"
        ),
        pytest.param(
            [(22, "Revoked", "Expired"), (3389, "Revoked", "NewerRequestInitiated")],
            PortState.CLOSED,
            "superseded",
            id="superseded",
        ),
        pytest.param(
            [(22, "Revoked", "PolicyRemoved")], PortState.CLOSED, "PolicyRemoved", id="new-reason"
        ),
        pytest.param([(22, "Pending", "Queued")], PortState.UNKNOWN, None, id="new-status"),
        pytest.param(
            [(22, "Revoked", "Expired"), (3389, "Initiated", "UserRequested")],
            PortState.OPEN,
            None,
            id="one-port-still-open",
        ),
    ],
)
def test_defender_statuses_map_to_what_jitbot_tells(
    statuses: list[tuple[int, str, str]], state: PortState, reason: str | None
) -> None:
    request = defender_request(*statuses, started="2026-12-04T19:00:00Z")

    status = status_of(request, WEB, [p for p, _, _ in statuses])

    assert status.state == state
    assert status.reason == reason


def test_a_request_missing_from_the_history_is_reported_missing() -> None:
    assert status_of(None, WEB, [22]).state == PortState.MISSING
    other_port = defender_request((3389, "Initiated", "UserRequested"), started="x")
    assert status_of(other_port, WEB, [22]).state == PortState.MISSING


def test_a_request_is_found_by_its_start_time_whatever_the_fraction_digits() -> None:
    ours = defender_request((22, "Initiated", "UserRequested"), started="2026-12-04T19:00:00.5Z")
    newer = defender_request((22, "Initiating", "UserRequested"), started="2026-12-04T19:05:00Z")
    policy = policy_json("default", WEB, requests=[ours, newer])

    started = parse_utc("2026-12-04T19:00:00.5000000Z")

    assert find_request(policy, WEB, started) is ours
    assert find_request(policy, DB, started) is None


def test_a_request_is_found_by_the_mark_in_its_justification_after_a_crash() -> None:
    other = defender_request((22, "Initiated", "UserRequested"), started="a", why="by hand")
    ours = defender_request(
        (22, "Initiating", "UserRequested"), started="b", why=justification(12, "U1", "U2", "")
    )
    policy = policy_json("default", WEB, requests=[other, ours])

    assert find_request(policy, WEB, None, request_marker(12)) is ours
    assert find_request(policy, WEB, None, request_marker(1)) is None


# -- plan, durations, times, errors ----------------------------------------------------


def test_plan_2_is_standard_with_sub_plan_p2_and_anything_else_is_refused() -> None:
    p2 = {"properties": {"pricingTier": "Standard", "subPlan": "P2"}}
    p1 = {"properties": {"pricingTier": "Standard", "subPlan": "P1"}}
    free = {"properties": {"pricingTier": "Free"}}

    assert plan_refusal("sub", p2) is None
    assert "sub-plan P1" in (plan_refusal("sub", p1) or "")
    assert "tier Free" in (plan_refusal("sub", free) or "")
    assert "Plan 2" in (plan_refusal("sub", None) or "")


def test_iso_durations_and_utc_times_round_trip() -> None:
    for value in (timedelta(minutes=5), timedelta(hours=3), timedelta(hours=1, minutes=30)):
        assert parse_iso_duration(iso_duration(value)) == value
    assert parse_iso_duration("P1D") == timedelta(days=1)
    assert parse_iso_duration("soon") is None
    moment = datetime(2026, 12, 4, 19, 0, 1, 250000, tzinfo=UTC)
    assert parse_utc(utc_text(moment)) == moment
    assert parse_utc("2026-12-04T20:00:01.25+01:00") == moment
    assert parse_utc("not a time") is None


def test_defender_refusals_become_sentences_that_say_what_to_do() -> None:
    forbidden = CloudError("Azure refused: AuthorizationFailed: no", "AuthorizationFailed", 403)
    disallowed = CloudError(
        "Azure refused to x: RequestDisallowedByPolicy: Resource 'default' was disallowed.",
        "RequestDisallowedByPolicy",
        403,
    )
    outside = CloudError(
        "Azure refused to x: JitRequestSourceAddressNotAllowed: not allowed by the JIT policy.",
        "JitRequestSourceAddressNotAllowed",
        400,
    )

    assert "initiate/action" in explain_error(forbidden, "vm-web01")
    assert "Azure Policy assignment" in explain_error(disallowed, "vm-web01")
    assert "was disallowed" in explain_error(disallowed, "vm-web01")
    text = explain_error(outside, "vm-web01")
    assert "outside its JIT policy" in text
    assert "not allowed by the JIT policy" in text
    in_another = CloudError(
        "Azure refused to x: JitPolicyVirtualMachineInAnotherPolicy: already in 'ops'.",
        "JitPolicyVirtualMachineInAnotherPolicy",
        400,
    )
    written = explain_error(in_another, "vm-web01", writing_policy=True)
    assert written.startswith("Defender for Cloud refused jitbot's JIT policy for vm-web01")
    assert "already in 'ops'" in written


# -- the jitbot policy in defender mode ------------------------------------------------


def policy_data(**overrides: object) -> dict:
    policy = {
        "name": "web-defender",
        "vms": ["vm-web01"],
        "ports": [{"port": 22, "protocol": "Tcp", "max_duration": "3h"}],
        "approvers": ["U0APPROVR1"],
        "approval_channel": "C0OPS12345",
        "enforcement": "defender",
    }
    policy.update(overrides)
    return {"policies": [policy]}


def test_defender_mode_refuses_a_firewall_at_load() -> None:
    with pytest.raises(PolicyError, match="cannot be combined with firewall"):
        parse_policies(policy_data(firewall="/subscriptions/s/x/fw"))


def test_defender_mode_refuses_a_maximum_below_five_minutes_at_load() -> None:
    ports = [{"port": 22, "max_duration": "4m"}]
    with pytest.raises(PolicyError, match="between 5m and 24h"):
        parse_policies(policy_data(ports=ports, min_duration="1m"))


def test_a_defender_request_from_inside_an_allowed_range_is_refused_before_anything() -> None:
    policies = parse_policies(policy_data(allowed_sources=["198.51.100.0/24"]))

    with pytest.raises(InvalidSource, match="request `from 198.51.100.0/24` instead"):
        check_request(policies, "vm-web01", [22], timedelta(hours=1), "198.51.100.7")
    checked = check_request(policies, "vm-web01", [22], timedelta(hours=1), "198.51.100.0/24")
    assert checked.source_prefix == "198.51.100.0/24"


def test_nsg_mode_keeps_accepting_a_single_address_inside_an_allowed_range() -> None:
    policies = parse_policies(policy_data(enforcement="nsg", allowed_sources=["198.51.100.0/24"]))

    checked = check_request(policies, "vm-web01", [22], timedelta(hours=1), "198.51.100.7")

    assert checked.source_prefix == "198.51.100.7/32"


def test_defender_mode_refuses_an_allowed_source_nobody_could_request_at_load() -> None:
    with pytest.raises(PolicyError, match="none may be wider than widest_source_v4"):
        parse_policies(policy_data(allowed_sources=["10.0.0.0/16"]))
    parse_policies(policy_data(allowed_sources=["10.0.0.0/16"], widest_source_v4=16))
