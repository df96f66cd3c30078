"""What an approver should know about a source address before letting it in.

A source can be valid for the policy and still deserve a second look: a private address
(RFC 1918, unique-local IPv6) is reachable only through a VPN or peering, a shared CGNAT
address (100.64.0.0/10) belongs to a carrier and to everyone behind it, and an address
in a cloud provider's published ranges is a cloud machine, not a person's connection.

Cloud ranges come from files the operator downloads and keeps up to date, in the formats
the providers publish them in; jitbot never fetches them:

- Azure Service Tags (``ServiceTags_Public_*.json``): ``values[].name`` and
  ``values[].properties.addressPrefixes``;
- AWS ``ip-ranges.json``: ``prefixes[].ip_prefix`` and ``ipv6_prefixes[].ipv6_prefix``,
  with ``region`` and ``service``;
- Google Cloud ``cloud.json``: ``prefixes[].ipv4Prefix`` / ``ipv6Prefix``, with ``scope``.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jitcore.errors import JitError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

CGNAT = ipaddress.ip_network("100.64.0.0/10")
PRIVATE_RANGES: tuple[Network, ...] = (
    ipaddress.ip_network("10.0.0.0/8"),
    ipaddress.ip_network("172.16.0.0/12"),
    ipaddress.ip_network("192.168.0.0/16"),
    ipaddress.ip_network("fc00::/7"),
)
MAX_CLOUD_LABELS = 3


class CloudRangesError(JitError):
    """A cloud ranges file cannot be read or is in none of the known formats."""


@dataclass(frozen=True)
class SourceFlag:
    kind: str  # "private" | "cgnat" | "cloud"
    detail: str


@dataclass(frozen=True)
class CloudRange:
    network: Network
    label: str


def load_cloud_ranges(paths: list[Path]) -> list[CloudRange]:
    """The ranges of every file in ``paths``; raises CloudRangesError naming the file."""
    ranges: list[CloudRange] = []
    for path in paths:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CloudRangesError(f"cannot read cloud ranges file {path}: {exc}") from None
        try:
            ranges.extend(parse_cloud_ranges(data))
        except (KeyError, TypeError, ValueError) as exc:
            raise CloudRangesError(
                f"cloud ranges file {path} is not an Azure Service Tags, AWS ip-ranges or "
                f"Google cloud.json file: {exc}"
            ) from None
    return ranges


def parse_cloud_ranges(data: Any) -> list[CloudRange]:
    """Ranges from one published file, its format recognised by its keys."""
    if not isinstance(data, dict):
        raise TypeError("the file is not a JSON object")
    if "values" in data:
        return [
            CloudRange(ipaddress.ip_network(prefix), f"Azure {tag['name']}")
            for tag in data["values"]
            for prefix in tag["properties"].get("addressPrefixes", [])
        ]
    if "prefixes" in data and "syncToken" in data and "createDate" in data:
        return [
            CloudRange(ipaddress.ip_network(entry["ip_prefix"]), _aws_label(entry))
            for entry in data["prefixes"]
        ] + [
            CloudRange(ipaddress.ip_network(entry["ipv6_prefix"]), _aws_label(entry))
            for entry in data.get("ipv6_prefixes", [])
        ]
    if "prefixes" in data:
        return [
            CloudRange(
                ipaddress.ip_network(entry.get("ipv4Prefix") or entry["ipv6Prefix"]),
                f"Google Cloud {entry.get('scope', '')}".strip(),
            )
            for entry in data["prefixes"]
        ]
    raise ValueError("it has neither `values` nor `prefixes`")


def _aws_label(entry: dict[str, Any]) -> str:
    return f"AWS {entry.get('service', '')} {entry.get('region', '')}".replace("  ", " ").strip()


class SourceFlagger:
    """Flags for a source prefix, from fixed private/shared ranges and the cloud ranges."""

    def __init__(self, cloud_ranges: list[CloudRange] | None = None) -> None:
        self.cloud_ranges = cloud_ranges or []

    def flags(self, prefix: str) -> list[SourceFlag]:
        network = ipaddress.ip_network(prefix, strict=False)
        found: list[SourceFlag] = []
        if any(_overlaps(network, private) for private in PRIVATE_RANGES):
            found.append(SourceFlag("private", "a private address (reachable only via VPN)"))
        if _overlaps(network, CGNAT):
            found.append(SourceFlag("cgnat", "a shared carrier-grade NAT address (100.64.0.0/10)"))
        clouds = sorted(
            (r for r in self.cloud_ranges if _overlaps(network, r.network)),
            key=lambda r: -r.network.prefixlen,
        )
        labels: list[str] = []
        for cloud in clouds:
            if cloud.label not in labels:
                labels.append(cloud.label)
        if labels:
            shown = ", ".join(labels[:MAX_CLOUD_LABELS])
            more = len(labels) - MAX_CLOUD_LABELS
            if more > 0:
                shown += f" and {more} more"
            found.append(SourceFlag("cloud", f"a cloud provider's address ({shown})"))
        return found


def _overlaps(network: Network, other: Network) -> bool:
    return network.version == other.version and network.overlaps(other)  # type: ignore[arg-type]
