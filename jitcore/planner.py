"""Where a rule goes in an NSG, and how to tell that an NSG is back to how it was.

Pure functions over plain data: no I/O, no SDK types. Every NSG semantic jitbot relies on
lives here so that it can be tested exhaustively.

Azure evaluates the custom rules of a direction in ascending priority order (100 is
first, 4096 last) and stops at the first match; the default rules (65000+) come after.
An allow for a grant therefore has to sit before the first deny that would otherwise
block the same traffic, and jitbot only ever takes a priority nobody uses.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from jitcore.errors import PlacementError

MIN_PRIORITY = 100
MAX_PRIORITY = 4096
MAX_RULES_PER_NSG = 1000
MAX_DESCRIPTION = 140
MAX_NAME = 80
RULE_PREFIX = "jitbot-"
ALLOW_PREFIX = "jitbot-allow-"
DENY_PREFIX = "jitbot-deny-"
_NAME_OK = re.compile(r"^\w[\w.-]{0,78}[\w]$|^\w$")
_VOLATILE_KEYS = ("etag", "id", "provisioningState", "type")


@dataclass(frozen=True)
class Rule:
    """A custom security rule, reduced to what decides traffic plus its name and description."""

    name: str
    priority: int
    direction: str
    access: str
    protocol: str = "*"
    source_prefixes: tuple[str, ...] = ("*",)
    destination_prefixes: tuple[str, ...] = ("*",)
    destination_ports: tuple[str, ...] = ("*",)
    source_ports: tuple[str, ...] = ("*",)
    description: str = ""
    has_application_security_groups: bool = False

    @classmethod
    def from_arm(cls, rule: dict[str, Any]) -> Rule:
        props = rule.get("properties", rule)

        def many(single: str, plural: str) -> tuple[str, ...]:
            values = props.get(plural) or []
            if not values and props.get(single):
                values = [props[single]]
            return tuple(values) or ("*",)

        return cls(
            name=rule["name"],
            priority=int(props["priority"]),
            direction=props["direction"],
            access=props["access"],
            protocol=props.get("protocol", "*"),
            source_prefixes=many("sourceAddressPrefix", "sourceAddressPrefixes"),
            destination_prefixes=many("destinationAddressPrefix", "destinationAddressPrefixes"),
            destination_ports=many("destinationPortRange", "destinationPortRanges"),
            source_ports=many("sourcePortRange", "sourcePortRanges"),
            description=props.get("description") or "",
            has_application_security_groups=bool(
                props.get("sourceApplicationSecurityGroups")
                or props.get("destinationApplicationSecurityGroups")
            ),
        )

    def to_arm_properties(self) -> dict[str, Any]:
        """The ``properties`` body of a PUT, using the singular fields where one value suffices."""
        props: dict[str, Any] = {
            "description": self.description,
            "protocol": self.protocol,
            "access": self.access,
            "direction": self.direction,
            "priority": self.priority,
        }
        for single, plural, values in (
            ("sourceAddressPrefix", "sourceAddressPrefixes", self.source_prefixes),
            ("destinationAddressPrefix", "destinationAddressPrefixes", self.destination_prefixes),
            ("destinationPortRange", "destinationPortRanges", self.destination_ports),
            ("sourcePortRange", "sourcePortRanges", self.source_ports),
        ):
            if len(values) == 1:
                props[single] = values[0]
            else:
                props[plural] = list(values)
        return props

    @property
    def owned_by_jitbot(self) -> bool:
        return self.name.startswith(RULE_PREFIX) and self.description.startswith("jitbot")


@dataclass(frozen=True)
class AllowSpec:
    """What a grant must let through: this source, to this address, on these ports."""

    request_id: int
    vm_name: str
    source_prefix: str
    destination: str
    ports: tuple[int, ...]
    protocol: str
    ends_at: datetime
    extra_names: tuple[str, ...] = field(default=())


def _port_span(text: str) -> tuple[int, int]:
    if text == "*":
        return (0, 65535)
    if "-" in text:
        low, high = text.split("-", 1)
        return (int(low), int(high))
    return (int(text), int(text))


def ports_overlap(ranges: Iterable[str], ports: Iterable[int]) -> bool:
    spans = [_port_span(r) for r in ranges]
    return any(low <= port <= high for port in ports for low, high in spans)


def _as_network(prefix: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(prefix, strict=False)
    except ValueError:
        return None


def prefixes_overlap(ours: str, theirs: Iterable[str]) -> bool:
    """Whether traffic from/to ``ours`` may be matched by any of ``theirs``.

    Service tags (Internet, VirtualNetwork, ...) and ``*`` are treated as overlapping,
    which errs on the side of placing an allow earlier rather than behind a deny.
    """
    mine = _as_network(ours)
    for prefix in theirs:
        other = _as_network(prefix)
        if other is None or mine is None:
            return True
        if other.version == mine.version and mine.overlaps(other):  # type: ignore[arg-type]
            return True
    return False


def protocols_overlap(a: str, b: str) -> bool:
    return a == "*" or b == "*" or a.lower() == b.lower()


def blocking_deny_priority(rules: Sequence[Rule], spec: AllowSpec) -> int:
    """Priority of the first inbound deny that would drop the grant's traffic.

    Without one, the default DenyAllInBound (65500) is what blocks it, and everything
    up to the last custom priority is free to use.
    """
    candidates = [
        rule.priority
        for rule in rules
        if rule.direction.lower() == "inbound"
        and rule.access.lower() == "deny"
        and protocols_overlap(rule.protocol, spec.protocol)
        and ports_overlap(rule.destination_ports, spec.ports)
        and prefixes_overlap(spec.source_prefix, rule.source_prefixes)
        and prefixes_overlap(spec.destination, rule.destination_prefixes)
    ]
    return min(candidates, default=MAX_PRIORITY + 1)


def free_priority_before(rules: Sequence[Rule], direction: str, barrier: int) -> int:
    """The free priority closest to (and before) ``barrier``, so the allow changes nothing
    about how traffic meets the other rules before it."""
    taken = {rule.priority for rule in rules if rule.direction.lower() == direction.lower()}
    for priority in range(min(barrier - 1, MAX_PRIORITY), MIN_PRIORITY - 1, -1):
        if priority not in taken:
            return priority
    raise PlacementError(
        f"no free {direction.lower()} priority between {MIN_PRIORITY} and {barrier - 1} "
        "before the deny rule; free one up or move the deny rule"
    )


def rule_description(spec: AllowSpec) -> str:
    """``jitbot r<id> until <UTC end> for <vm>``, cut to Azure's 140 characters.

    The request id and end come first so they survive the cut: any replica can find and
    expire the rule from the NSG alone.
    """
    until = spec.ends_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    text = f"jitbot r{spec.request_id} until {until} for {spec.vm_name}"
    return text[:MAX_DESCRIPTION]


def rule_name(spec: AllowSpec, taken_names: Iterable[str]) -> str:
    taken = {name.lower() for name in taken_names}
    base = f"{ALLOW_PREFIX}r{spec.request_id}"
    name = base
    suffix = 2
    while name.lower() in taken:
        name = f"{base}-{suffix}"
        suffix += 1
    if not _NAME_OK.match(name) or len(name) > MAX_NAME:
        raise PlacementError(f"cannot form a valid rule name for request {spec.request_id}")
    return name


def plan_allow(rules: Sequence[Rule], spec: AllowSpec) -> Rule:
    """The allow rule to add to an NSG holding ``rules`` (its custom rules) for ``spec``."""
    if len(rules) >= MAX_RULES_PER_NSG:
        raise PlacementError(
            f"the NSG already holds {len(rules)} rules, Azure's limit is {MAX_RULES_PER_NSG}"
        )
    barrier = blocking_deny_priority(rules, spec)
    priority = free_priority_before(rules, "Inbound", barrier)
    return Rule(
        name=rule_name(spec, [rule.name for rule in rules] + list(spec.extra_names)),
        priority=priority,
        direction="Inbound",
        access="Allow",
        protocol=spec.protocol,
        source_prefixes=(spec.source_prefix,),
        destination_prefixes=(spec.destination,),
        destination_ports=tuple(str(p) for p in spec.ports),
        source_ports=("*",),
        description=rule_description(spec),
    )


def comparable(rules: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Custom rules as ARM JSON without the fields Azure changes on its own (etag, state),
    sorted by name, so two snapshots compare equal exactly when the rules are the same."""
    result = []
    for rule in rules:
        props = {
            k: v
            for k, v in rule.get("properties", {}).items()
            if k not in _VOLATILE_KEYS and v not in (None, [], "")
        }
        result.append({"name": rule["name"], "properties": props})
    return sorted(result, key=lambda r: r["name"].lower())


def differences(before: Iterable[dict[str, Any]], after: Iterable[dict[str, Any]]) -> list[str]:
    """Names of rules added, removed or changed between two snapshots."""
    old = {r["name"].lower(): r for r in comparable(before)}
    new = {r["name"].lower(): r for r in comparable(after)}
    changed = [name for name in old.keys() & new.keys() if old[name] != new[name]]
    added = new.keys() - old.keys()
    removed = old.keys() - new.keys()
    return sorted(
        [f"added {n}" for n in added]
        + [f"removed {n}" for n in removed]
        + [f"changed {n}" for n in changed]
    )


ALLOW_ROOM = 50
"""Free priorities a new JIT deny leaves before it, when nothing forces it lower, so that
grants always have somewhere to go."""

_NAME_CHARS = re.compile(r"[^\w.-]")


def deny_rule_name(vm_name: str) -> str:
    """``jitbot-deny-<vm>``, made a valid Azure rule name whatever the VM is called."""
    safe = _NAME_CHARS.sub("-", vm_name)
    name = (DENY_PREFIX + safe)[:MAX_NAME].rstrip(".-")
    return name if _NAME_OK.match(name) else DENY_PREFIX.rstrip("-")


def deny_description(vm_name: str) -> str:
    return f"jitbot: JIT deny for {vm_name}"[:MAX_DESCRIPTION]


def plan_deny(rules: Sequence[Rule], vm_name: str, destination: str, ports: Sequence[int]) -> Rule:
    """The JIT deny rule protecting ``ports`` of a VM in an NSG holding ``rules``.

    Rules that already decide traffic to those ports on this VM (other than jitbot's own)
    keep their precedence: the deny goes after the last of them. With none, it takes the
    first free priority that still leaves :data:`ALLOW_ROOM` free priorities before it.
    """
    if len(rules) >= MAX_RULES_PER_NSG:
        raise PlacementError(
            f"the NSG already holds {len(rules)} rules, Azure's limit is {MAX_RULES_PER_NSG}"
        )
    taken = {rule.priority for rule in rules if rule.direction.lower() == "inbound"}
    covering = [
        rule.priority
        for rule in rules
        if rule.direction.lower() == "inbound"
        and not rule.owned_by_jitbot
        and ports_overlap(rule.destination_ports, ports)
        and prefixes_overlap(destination, rule.destination_prefixes)
    ]
    if covering:
        start = max(covering) + 1
    else:
        free_seen = 0
        start = MIN_PRIORITY
        while start <= MAX_PRIORITY and free_seen < ALLOW_ROOM:
            if start not in taken:
                free_seen += 1
            start += 1
    priority = next((p for p in range(start, MAX_PRIORITY + 1) if p not in taken), None)
    if priority is None:
        raise PlacementError(
            f"no free inbound priority after {start - 1} for the JIT deny rule of {vm_name}"
        )
    return Rule(
        name=deny_rule_name(vm_name),
        priority=priority,
        direction="Inbound",
        access="Deny",
        protocol="*",
        source_prefixes=("*",),
        destination_prefixes=(destination,),
        destination_ports=tuple(str(p) for p in ports),
        source_ports=("*",),
        description=deny_description(vm_name),
    )


def parse_allow_description(description: str) -> tuple[int, datetime] | None:
    """The request id and end time from an allow rule's description, if it is jitbot's."""
    match = _ALLOW_DESCRIPTION.match(description or "")
    if match is None:
        return None
    end = datetime.strptime(match.group(2), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return int(match.group(1)), end


_ALLOW_DESCRIPTION = re.compile(r"^jitbot r(\d+) until (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)")
