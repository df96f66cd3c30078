"""The DNAT rules jitbot owns on an Azure Firewall with classic rule collections.

Classic rule collections are properties of the firewall resource itself: unlike NSG security
rules there is no API for one rule, so every change is a read-modify-write of the whole
firewall. To never overwrite a change somebody else makes at the same moment, each PUT carries
``If-Match`` with the ETag that was read; a 412 means the firewall changed in between, so it is
read again and the change applied afresh (a bounded number of times). 409
``AnotherOperationInProgress``, 429 (honouring ``Retry-After``) and 5xx are retried with backoff,
and the long-running operation is followed to its end before a write counts as done.

jitbot's rules live only in its own NAT rule collection, :data:`JIT_COLLECTION`, created at a
free priority on first use and removed when its last rule goes; every other collection is
written back exactly as it was read. A firewall managed by Azure Firewall Manager keeps its
rules in a firewall policy, which jitbot does not write: such a firewall is refused with a
reason, never skipped silently.
"""

from __future__ import annotations

import copy
import ipaddress
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from azure.mgmt.network.models import AzureFirewall

from jitcore.azure.clients import (
    NETWORK_API_VERSION,
    AzureTarget,
    as_json,
    network_client,
    parse_resource_id,
)
from jitcore.azure.retry import Retrier
from jitcore.errors import CloudError, PlacementError

log = logging.getLogger(__name__)

T = TypeVar("T")

JIT_COLLECTION = "jitbot-jit"
DNAT_PREFIX = "jitbot-dnat-"
NAT_PRIORITY_MIN = 100
NAT_PRIORITY_MAX = 65000
MAX_NAME = 80
MAX_DESCRIPTION = 140
PROTOCOLS = ("TCP", "UDP")

_NAME_OK = re.compile(r"^\w(?:[\w.-]{0,78}\w)?$")


@dataclass(frozen=True)
class FirewallInfo:
    """What jitbot needs to know about a firewall in front of a VM."""

    id: str
    name: str
    private_ip: str | None
    public_ips: tuple[str, ...]
    policy_managed: bool
    etag: str | None


@dataclass(frozen=True)
class DnatRule:
    """One DNAT rule: ``public_ip:public_port`` from ``source_prefix`` to
    ``private_ip:private_port``. Build names and descriptions with :func:`dnat_rule_name` and
    :func:`dnat_description` so that any replica can recognise and expire the rule."""

    name: str
    source_prefix: str
    public_ip: str
    public_port: int
    private_ip: str
    private_port: int
    protocol: str
    description: str

    def __post_init__(self) -> None:
        if len(self.name) > MAX_NAME or not _NAME_OK.match(self.name):
            raise PlacementError(
                f"`{self.name}` is not a valid firewall rule name (1-{MAX_NAME} letters, digits, "
                "'_', '.' or '-', starting and ending with a letter, digit or '_')"
            )
        if self.protocol.upper() not in PROTOCOLS:
            raise PlacementError(
                f"a DNAT rule forwards TCP or UDP, not {self.protocol} (rule {self.name})"
            )
        object.__setattr__(self, "protocol", self.protocol.upper())
        for port in (self.public_port, self.private_port):
            if not 1 <= port <= 65535:
                raise PlacementError(f"port {port} of rule {self.name} is outside 1-65535")
        if len(self.description) > MAX_DESCRIPTION:
            raise PlacementError(
                f"the description of rule {self.name} is longer than {MAX_DESCRIPTION} characters"
            )

    def to_arm(self) -> dict[str, Any]:
        """The rule as an ``AzureFirewallNatRule`` of the ARM API."""
        return {
            "name": self.name,
            "description": self.description,
            "sourceAddresses": [self.source_prefix],
            "destinationAddresses": [self.public_ip],
            "destinationPorts": [str(self.public_port)],
            "protocols": [self.protocol],
            "translatedAddress": self.private_ip,
            "translatedPort": str(self.private_port),
        }


def dnat_rule_name(request_id: int, public_port: int) -> str:
    """``jitbot-dnat-r<id>-<public port>``: one rule per request and port."""
    return f"{DNAT_PREFIX}r{request_id}-{public_port}"


def dnat_description(request_id: int, ends_at: datetime, vm_name: str) -> str:
    """``jitbot r<id> until <UTC end> for <vm>``, as for NSG rules, cut to 140 characters."""
    until = ends_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"jitbot r{request_id} until {until} for {vm_name}"[:MAX_DESCRIPTION]


def policy_managed_message(firewall_name: str, policy_id: str) -> str:
    """Why jitbot cannot open access through a firewall managed by Azure Firewall Manager."""
    policy = policy_id.rstrip("/").rsplit("/", 1)[-1]
    return (
        f"{firewall_name} is managed by Azure Firewall Manager (firewall policy {policy}); "
        "jitbot only writes classic rule collections, so it cannot open access through it"
    )


class FirewallGateway:
    """The Azure Firewall operations the engine needs, against one subscription.

    Args:
        target: where Azure Resource Manager is and how to authenticate.
        attempts: tries per call for throttling, conflicts and server errors.
        backoff: the first retry delay in seconds (doubling, capped at 10) when Azure gives
            no ``Retry-After``.
        sleep: how to wait between tries (tests pass a recorder).
        rereads: read-modify-write rounds before giving up on a firewall that keeps changing.
    """

    def __init__(
        self,
        target: AzureTarget,
        attempts: int = 8,
        backoff: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
        rereads: int = 5,
    ) -> None:
        self._client = network_client(target)
        self._polling_interval = target.polling_interval
        self._retrier = Retrier(attempts=attempts, backoff=backoff, sleep=sleep)
        self._rereads = rereads
        self._locks: dict[str, threading.RLock] = {}
        self._locks_guard = threading.Lock()

    def close(self) -> None:
        self._client.close()

    def lock_for(self, firewall_id: str) -> threading.RLock:
        """The lock serialising writes to one firewall (ids compare case-insensitively).

        :meth:`add_dnat` and :meth:`remove_dnat` take it themselves; it is re-entrant, so a
        caller may also hold it around several calls, as the engine does with NSG locks.
        """
        with self._locks_guard:
            return self._locks.setdefault(firewall_id.lower(), threading.RLock())

    # ------------------------------------------------------------------ reads

    def describe(self, firewall_id: str) -> FirewallInfo:
        """Addresses, management mode and ETag of a firewall."""
        return self._info(self._read(firewall_id))

    def dnat_rules(self, firewall_id: str) -> list[dict[str, Any]]:
        """The rules of jitbot's NAT collection as ARM JSON (empty when it has none)."""
        collection = _find(_nat_collections(self._read(firewall_id)), JIT_COLLECTION)
        if collection is None:
            return []
        return copy.deepcopy(collection.get("properties", {}).get("rules") or [])

    # ------------------------------------------------------------------ writes

    def add_dnat(self, firewall_id: str, rule: DnatRule) -> None:
        """Add (or update) ``rule`` in jitbot's NAT collection and wait until Azure applied it.

        Raises PlacementError for a policy-managed firewall, a public IP the firewall does not
        own, or a rule of anyone's that already forwards the same traffic.
        """
        name = _name_of(firewall_id)
        with self.lock_for(firewall_id):
            for _ in self._rounds(name):
                firewall = self._read(firewall_id)
                info = self._info(firewall)
                _check_writable(firewall, info)
                if rule.public_ip not in info.public_ips:
                    shown = ", ".join(info.public_ips) or "none"
                    raise PlacementError(
                        f"{rule.public_ip} is not a public IP address of {name}; its public "
                        f"IP addresses: {shown}"
                    )
                body = with_dnat(firewall, rule)
                if body is None:
                    log.info("DNAT rule %s is already in place on %s", rule.name, name)
                    return
                if self._write(firewall_id, body, info.etag, f"add the DNAT rule {rule.name}"):
                    log.info(
                        "DNAT rule %s added on %s: %s:%d/%s from %s to %s:%d",
                        rule.name,
                        name,
                        rule.public_ip,
                        rule.public_port,
                        rule.protocol,
                        rule.source_prefix,
                        rule.private_ip,
                        rule.private_port,
                    )
                    return

    def remove_dnat(self, firewall_id: str, rule_name: str) -> bool:
        """Remove one of jitbot's DNAT rules (and its collection once empty).

        Returns False when the rule was not there; nothing is written then.
        """
        name = _name_of(firewall_id)
        with self.lock_for(firewall_id):
            for _ in self._rounds(name):
                firewall = self._read(firewall_id)
                body = without_dnat(firewall, rule_name)
                if body is None:
                    log.info("DNAT rule %s was already gone from %s", rule_name, name)
                    return False
                etag = firewall.get("etag")
                if self._write(firewall_id, body, etag, f"remove the DNAT rule {rule_name}"):
                    log.info("DNAT rule %s removed from %s", rule_name, name)
                    return True
        return False  # pragma: no cover (_rounds raises when it runs out)

    # ------------------------------------------------------------------ plumbing

    def _rounds(self, name: str) -> Iterator[int]:
        """Read-modify-write rounds; a round that ends without returning lost to a 412."""
        for round_number in range(1, self._rereads + 1):
            yield round_number
            if round_number < self._rereads:
                log.warning(
                    "%s changed while jitbot was writing it; reading it again (round %d)",
                    name,
                    round_number + 1,
                )
        raise CloudError(
            f"gave up writing {name}: it changed under jitbot {self._rereads} times in a row",
            code="PreconditionFailed",
            status=412,
        )

    def _read(self, firewall_id: str) -> dict[str, Any]:
        parts = parse_resource_id(firewall_id)

        def read() -> dict[str, Any]:
            firewall = self._client.azure_firewalls.get(
                parts["resource_group"], parts["name"], api_version=NETWORK_API_VERSION
            )
            return as_json(firewall)

        return self._retrier.run(read, f"read the firewall {parts['name']}")

    def _write(self, firewall_id: str, body: dict[str, Any], etag: str | None, doing: str) -> bool:
        """PUT the whole firewall if it still has ``etag``; False when it no longer had it."""
        parts = parse_resource_id(firewall_id)
        headers = {"If-Match": etag} if etag else {}
        if not etag:
            log.warning("%s has no ETag; writing it without If-Match", parts["name"])

        def write() -> None:
            poller = self._client.azure_firewalls.begin_create_or_update(
                parts["resource_group"],
                parts["name"],
                AzureFirewall(body),
                api_version=NETWORK_API_VERSION,
                polling_interval=self._polling_interval,
                headers=headers,
            )
            poller.result()

        try:
            self._retrier.run(write, f"{doing} on {parts['name']}")
        except CloudError as exc:
            if exc.status == 412:
                log.debug("%s: ETag %s is stale", parts["name"], etag)
                return False
            raise
        return True

    def _info(self, firewall: dict[str, Any]) -> FirewallInfo:
        properties = firewall.get("properties") or {}
        configs = properties.get("ipConfigurations") or []
        private_ips = [
            config.get("properties", {}).get("privateIPAddress")
            for config in configs
            if config.get("properties", {}).get("privateIPAddress")
        ]
        hub = properties.get("hubIPAddresses") or {}
        private_ip = private_ips[0] if private_ips else hub.get("privateIPAddress")
        public_ips = [self._public_ip(config) for config in configs]
        hub_publics = (hub.get("publicIPs") or {}).get("addresses") or []
        public_ips += [item.get("address") for item in hub_publics]
        return FirewallInfo(
            id=firewall["id"],
            name=firewall["name"],
            private_ip=private_ip,
            public_ips=tuple(ip for ip in public_ips if ip),
            policy_managed=bool(_policy_id(firewall)),
            etag=firewall.get("etag"),
        )

    def _public_ip(self, config: dict[str, Any]) -> str | None:
        reference = (config.get("properties", {}).get("publicIPAddress") or {}).get("id")
        if not reference:
            return None
        parts = parse_resource_id(reference)

        def read() -> str | None:
            pip = self._client.public_ip_addresses.get(
                parts["resource_group"], parts["name"], api_version=NETWORK_API_VERSION
            )
            return as_json(pip).get("properties", {}).get("ipAddress")

        return self._retrier.run(read, f"read the public IP address {parts['name']}")


# ---------------------------------------------------------------------- the changes, pure


def with_dnat(firewall: dict[str, Any], rule: DnatRule) -> dict[str, Any] | None:
    """The firewall with ``rule`` in jitbot's NAT collection; None if it is already there.

    Only :data:`JIT_COLLECTION` changes; the collection is created at the highest free NAT
    priority, so every customer collection keeps its precedence.
    """
    body = copy.deepcopy(firewall)
    properties = body.setdefault("properties", {})
    collections = properties.get("natRuleCollections") or []
    properties["natRuleCollections"] = collections
    _check_conflicts(collections, rule, body.get("name", "the firewall"))

    wanted = rule.to_arm()
    ours = _find(collections, JIT_COLLECTION)
    if ours is None:
        collections.append(
            {
                "name": JIT_COLLECTION,
                "properties": {
                    "priority": free_nat_priority(collections),
                    "action": {"type": "Dnat"},
                    "rules": [wanted],
                },
            }
        )
        return body
    rules = ours.setdefault("properties", {}).get("rules") or []
    ours["properties"]["rules"] = rules
    for index, existing in enumerate(rules):
        if existing.get("name", "").lower() == rule.name.lower():
            if _comparable_rule(existing) == _comparable_rule(wanted):
                return None
            rules[index] = wanted
            return body
    rules.append(wanted)
    return body


def without_dnat(firewall: dict[str, Any], rule_name: str) -> dict[str, Any] | None:
    """The firewall without jitbot's rule ``rule_name``; None if there is no such rule.

    jitbot's collection goes with its last rule, so the firewall returns to its state before
    jitbot first wrote to it.
    """
    body = copy.deepcopy(firewall)
    collections = body.get("properties", {}).get("natRuleCollections") or []
    ours = _find(collections, JIT_COLLECTION)
    if ours is None:
        return None
    rules = ours.get("properties", {}).get("rules") or []
    kept = [rule for rule in rules if rule.get("name", "").lower() != rule_name.lower()]
    if len(kept) == len(rules):
        return None
    if kept:
        ours["properties"]["rules"] = kept
    else:
        collections.remove(ours)
    return body


def free_nat_priority(collections: Iterable[dict[str, Any]]) -> int:
    """The highest NAT collection priority nobody uses (Azure: 100-65000, unique per type)."""
    taken = {item.get("properties", {}).get("priority") for item in collections}
    for priority in range(NAT_PRIORITY_MAX, NAT_PRIORITY_MIN - 1, -1):
        if priority not in taken:
            return priority
    raise PlacementError("every NAT rule collection priority of the firewall is taken")


def _check_writable(firewall: dict[str, Any], info: FirewallInfo) -> None:
    policy = _policy_id(firewall)
    if policy:
        raise PlacementError(policy_managed_message(info.name, policy))


def _check_conflicts(collections: list[dict[str, Any]], rule: DnatRule, firewall: str) -> None:
    """Refuse a rule that another DNAT rule would shadow or be shadowed by: same protocol,
    public address and port, and overlapping sources."""
    for collection in collections:
        for other in collection.get("properties", {}).get("rules") or []:
            mine = collection.get("name", "").lower() == JIT_COLLECTION
            if mine and other.get("name", "").lower() == rule.name.lower():
                continue
            if _same_traffic(other, rule):
                raise PlacementError(
                    f"{rule.public_ip}:{rule.public_port}/{rule.protocol} on {firewall} is "
                    f"already forwarded by rule {other.get('name')} in collection "
                    f"{collection.get('name')} for an overlapping source"
                )


def _same_traffic(other: dict[str, Any], rule: DnatRule) -> bool:
    protocols = {str(p).upper() for p in other.get("protocols") or []}
    if protocols and not protocols & {rule.protocol, "ANY"}:
        return False
    destinations = other.get("destinationAddresses") or []
    if rule.public_ip not in destinations and "*" not in destinations:
        return False
    if not any(_port_in(rule.public_port, port) for port in other.get("destinationPorts") or []):
        return False
    if other.get("sourceIpGroups"):
        return True
    return _sources_overlap(rule.source_prefix, other.get("sourceAddresses") or [])


def _port_in(port: int, text: str) -> bool:
    if text == "*":
        return True
    low, _, high = str(text).partition("-")
    try:
        return int(low) <= port <= int(high or low)
    except ValueError:
        return False


def _sources_overlap(ours: str, theirs: Iterable[str]) -> bool:
    mine = _networks(ours)
    for item in theirs:
        for network in _networks(item):
            if any(network.version == m.version and network.overlaps(m) for m in mine):
                return True
    return False


def _networks(text: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """``*``, an address, a prefix or an ``a-b`` range as networks (unparsable: all)."""
    if text == "*":
        return [ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")]
    try:
        if "-" in text:
            low, high = (ipaddress.ip_address(part.strip()) for part in text.split("-", 1))
            return list(ipaddress.summarize_address_range(low, high))  # type: ignore[arg-type]
        return [ipaddress.ip_network(text, strict=False)]
    except (ValueError, TypeError):
        return _networks("*")


def _comparable_rule(rule: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in rule.items() if value not in (None, [], "")}


def _find(collections: Iterable[dict[str, Any]], name: str) -> dict[str, Any] | None:
    return next((c for c in collections if c.get("name", "").lower() == name.lower()), None)


def _nat_collections(firewall: dict[str, Any]) -> list[dict[str, Any]]:
    return list(firewall.get("properties", {}).get("natRuleCollections") or [])


def _policy_id(firewall: dict[str, Any]) -> str | None:
    policy = firewall.get("properties", {}).get("firewallPolicy") or {}
    return policy.get("id") or None


def _name_of(firewall_id: str) -> str:
    return parse_resource_id(firewall_id)["name"]
