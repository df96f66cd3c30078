from __future__ import annotations

from datetime import timedelta

import pytest

from jitcore.errors import DurationOutOfBounds, InvalidSource, PortNotAllowed, UnknownVm
from jitcore.policy import PolicyError, check_request, parse_policies

BASE = {
    "name": "web-admin",
    "vms": ["vm-web01"],
    "ports": [{"port": 22, "max_duration": "3h"}, {"port": 3389, "max_duration": "1h"}],
    "approvers": ["U0APPROVR1"],
    "approval_channel": "C0OPS12345",
}


def policies(**overrides: object) -> list:
    return parse_policies({"policies": [{**BASE, **overrides}]})


def test_a_request_within_the_policy_is_returned_in_canonical_form() -> None:
    checked = check_request(policies(), "VM-WEB01", [22], timedelta(hours=2), "203.0.113.7")
    assert checked.vm_name == "vm-web01"
    assert checked.source_prefix == "203.0.113.7/32"
    assert checked.protocol == "Tcp"


def test_a_resource_id_names_the_vm_too() -> None:
    vm_id = (
        "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm-web01"
    )
    assert (
        check_request(policies(), vm_id, [22], timedelta(hours=1), "203.0.113.7").vm_name
        == "vm-web01"
    )


def test_unknown_vm_lists_the_vms_that_can_be_requested() -> None:
    with pytest.raises(UnknownVm, match="VMs you can request: vm-web01"):
        check_request(policies(), "vm-db01", [22], timedelta(hours=1), "203.0.113.7")


def test_port_outside_the_policy_names_the_allowed_ports() -> None:
    with pytest.raises(
        PortNotAllowed, match="port 2222 is not in the policy for vm-web01; allowed: 22, 3389"
    ):
        check_request(policies(), "vm-web01", [2222], timedelta(hours=1), "203.0.113.7")


def test_the_shortest_maximum_of_the_requested_ports_applies() -> None:
    with pytest.raises(DurationOutOfBounds, match="2h is outside the policy; allowed: 5m to 1h"):
        check_request(policies(), "vm-web01", [22, 3389], timedelta(hours=2), "203.0.113.7")


def test_below_the_minimum_is_refused_with_defenders_default_of_five_minutes() -> None:
    with pytest.raises(DurationOutOfBounds, match="allowed: 5m to 3h"):
        check_request(policies(), "vm-web01", [22], timedelta(minutes=4), "203.0.113.7")


def test_a_policy_may_lower_the_minimum() -> None:
    checked = check_request(
        policies(min_duration="3s"), "vm-web01", [22], timedelta(seconds=3), "203.0.113.7"
    )
    assert checked.duration == timedelta(seconds=3)


def test_sources_outside_the_allowed_ranges_are_refused() -> None:
    limited = policies(allowed_sources=["198.51.100.0/24"])
    assert check_request(
        limited, "vm-web01", [22], timedelta(hours=1), "198.51.100.9"
    ).source_prefix
    with pytest.raises(InvalidSource, match="outside the sources this policy allows"):
        check_request(limited, "vm-web01", [22], timedelta(hours=1), "203.0.113.7")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"ports": [{"port": 22, "max_duration": "25h"}]}, "at most 24h"),
        ({"approvers": []}, "approvers"),
        ({"min_duration": "4h"}, "min_duration"),
        ({"enforcement": "magic"}, "enforcement"),
        ({"surprise": 1}, "surprise"),
        ({"allowed_sources": ["10.0.0.1/8"]}, "allowed_sources"),
    ],
)
def test_invalid_policies_are_refused_naming_the_setting(override: dict, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        policies(**override)


def test_a_policy_can_forbid_private_sources() -> None:
    strict = policies(allow_private_sources=False)
    with pytest.raises(InvalidSource, match="private or shared"):
        check_request(strict, "vm-web01", [22], timedelta(hours=1), "10.1.2.3")
    with pytest.raises(InvalidSource, match="private or shared"):
        check_request(strict, "vm-web01", [22], timedelta(hours=1), "100.64.0.9")


def test_a_policy_can_widen_the_allowed_source_range() -> None:
    with pytest.raises(InvalidSource, match="at most /24"):
        check_request(policies(), "vm-web01", [22], timedelta(hours=1), "198.51.0.0/16")
    wide = policies(widest_source_v4=16)
    assert check_request(wide, "vm-web01", [22], timedelta(hours=1), "198.51.0.0/16")
