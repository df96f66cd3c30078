"""Validation of the source address a requester asks to be let in from."""

from __future__ import annotations

import ipaddress

from jitcore.errors import InvalidSource

ANY_ADDRESS_WORDS = frozenset({"*", "any", "internet", "0.0.0.0", "::", "all"})
MAX_SOURCE_TEXT = 100

DEFAULT_WIDEST_V4 = 24
DEFAULT_WIDEST_V6 = 48
"""How wide a source range may be unless a policy says otherwise: a /24 of IPv4 or a /48
of IPv6 is a site, anything wider is closer to "the internet" than to "my address"."""


def canonical_source(text: str) -> str:
    """Return the canonical CIDR for a single address or a network given by the user.

    A bare address becomes a host prefix (/32 or /128). Anything that would open the
    port to everyone, a CIDR with host bits set, or an IPv4 address dressed up as IPv6
    (``::ffff:1.2.3.4``) is refused with the reason, since each is a common way of
    asking for more than was meant.
    """
    value = text.strip()
    if len(value) > MAX_SOURCE_TEXT:
        raise InvalidSource(value[:40] + "…", "it is too long to be an IP address or CIDR")
    if "%" in value:
        raise InvalidSource(value, "zone ids (the part after %) are not valid in NSG rules")
    if not value:
        raise InvalidSource(text, "it is empty; give an IP address or a CIDR like 203.0.113.7/32")
    if value.lower() in ANY_ADDRESS_WORDS or not any(ch.isdigit() for ch in value):
        raise InvalidSource(
            value, "it would allow any address or is a service tag; give one IP address or CIDR"
        )
    try:
        if "/" in value:
            network = ipaddress.ip_network(value, strict=True)
        else:
            address = ipaddress.ip_address(value)
            network = ipaddress.ip_network(address)
    except ValueError as exc:
        if "/" in value and "has host bits set" in str(exc):
            loose = ipaddress.ip_network(value, strict=False)
            raise InvalidSource(
                value, f"the CIDR has host bits set; did you mean {loose} or a single address?"
            ) from None
        raise InvalidSource(value, "it is not an IPv4 or IPv6 address or CIDR") from None
    if isinstance(network, ipaddress.IPv6Network) and network.network_address.ipv4_mapped:
        raise InvalidSource(value, "IPv4-mapped IPv6 addresses are not accepted; use the IPv4 form")
    if network.prefixlen == 0:
        raise InvalidSource(value, "it would allow any address")
    reason = _unusable(network)
    if reason:
        raise InvalidSource(value, reason)
    return str(network)


def _unusable(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str | None:
    """Why a network can never be where a person connects from, if so."""
    address = network.network_address
    if address.is_loopback:
        return "it is a loopback address"
    if address.is_link_local:
        return "it is a link-local address (169.254.0.0/16, fe80::/10)"
    if address.is_multicast:
        return "it is a multicast address"
    if address.is_unspecified or (network.version == 4 and str(address).startswith("0.")):
        return "it is in 0.0.0.0/8, which no host connects from"
    if network.version == 4 and address == ipaddress.ip_address("255.255.255.255"):
        return "it is the broadcast address"
    if address.is_reserved and network.version == 4:
        return "it is in a reserved range (240.0.0.0/4)"
    return None


def check_width(prefix: str, widest_v4: int, widest_v6: int) -> None:
    """Refuse a source range wider than the policy allows (``/widest`` or narrower)."""
    network = ipaddress.ip_network(prefix)
    widest = widest_v4 if network.version == 4 else widest_v6
    if network.prefixlen < widest:
        raise InvalidSource(
            prefix,
            f"the range is wider than this policy allows (at most /{widest}); "
            "ask for your own address or a narrower range",
        )


def is_private(prefix: str) -> bool:
    """Private (RFC 1918, unique-local) or shared (CGNAT 100.64.0.0/10) address space."""
    network = ipaddress.ip_network(prefix)
    cgnat = ipaddress.ip_network("100.64.0.0/10")
    if network.version == 4 and network.subnet_of(cgnat):  # type: ignore[arg-type]
        return True
    return network.network_address.is_private and not network.network_address.is_global
