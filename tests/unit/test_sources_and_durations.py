from __future__ import annotations

from datetime import timedelta

import pytest

from jitcore.durations import format_duration, parse_duration
from jitcore.errors import InvalidSource
from jitcore.sources import canonical_source


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("203.0.113.7", "203.0.113.7/32"),
        ("203.0.113.0/24", "203.0.113.0/24"),
        ("2001:db8::7", "2001:db8::7/128"),
        ("2001:DB8::/32", "2001:db8::/32"),
    ],
)
def test_addresses_become_canonical_prefixes(text: str, canonical: str) -> None:
    assert canonical_source(text) == canonical


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("0.0.0.0/0", "any address"),
        ("::/0", "any address"),
        ("*", "any address"),
        ("Internet", "service tag"),
        ("any", "any address"),
        ("AzureCloud", "service tag"),
        ("203.0.113.7/24", "host bits set"),
        ("::ffff:203.0.113.7", "IPv4-mapped"),
        ("300.1.1.1", "not an IPv4 or IPv6"),
        ("", "empty"),
    ],
)
def test_sources_that_mean_more_than_one_place_are_refused(text: str, reason: str) -> None:
    with pytest.raises(InvalidSource, match=reason):
        canonical_source(text)


def test_durations_parse_and_format_symmetrically() -> None:
    assert parse_duration("1h30m") == timedelta(minutes=90)
    assert parse_duration("45s") == timedelta(seconds=45)
    assert format_duration(timedelta(minutes=90)) == "1h30m"


@pytest.mark.parametrize("text", ["", "2", "h", "2x", "-1h", "1.5h", "2h 30m"])
def test_malformed_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("224.0.0.1", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("0.0.0.0/8", "0.0.0.0/8"),
        ("240.0.0.1", "reserved"),
        ("fe80::1%eth0", "zone ids"),
        ("::1", "loopback"),
        ("1" * 200, "too long"),
    ],
)
def test_addresses_nobody_connects_from_are_refused(text: str, reason: str) -> None:
    with pytest.raises(InvalidSource, match=reason):
        canonical_source(text)


@pytest.mark.parametrize("text", ["128.0.0.0/1", "10.0.0.0/8", "2001:db8::/32"])
def test_ranges_wider_than_the_policy_allows_are_refused(text: str) -> None:
    from jitcore.sources import check_width

    with pytest.raises(InvalidSource, match="wider than this policy allows"):
        check_width(canonical_source(text), 24, 48)


def test_private_and_cgnat_ranges_are_recognised() -> None:
    from jitcore.sources import is_private

    assert is_private("10.1.2.3/32") and is_private("100.64.1.1/32") and is_private("fd00::1/128")
    assert not is_private("8.8.8.8/32")


def test_absurd_durations_are_refused_not_crashed_on() -> None:
    with pytest.raises(ValueError, match="longer than any policy"):
        parse_duration("999999999999999999d")
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("²h")


def test_half_the_internet_starting_at_zero_is_refused() -> None:
    with pytest.raises(InvalidSource):
        canonical_source("0.0.0.0/1")
