"""Validation of the source address a requester asks to be let in from."""

from __future__ import annotations

import ipaddress

from jitcore.errors import InvalidSource

ANY_ADDRESS_WORDS = frozenset({"*", "any", "internet", "0.0.0.0", "::", "all"})


def canonical_source(text: str) -> str:
    """Return the canonical CIDR for a single address or a network given by the user.

    A bare address becomes a host prefix (/32 or /128). Anything that would open the
    port to everyone, a CIDR with host bits set, or an IPv4 address dressed up as IPv6
    (``::ffff:1.2.3.4``) is refused with the reason, since each is a common way of
    asking for more than was meant.
    """
    value = text.strip()
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
    return str(network)
