"""Defender for Cloud JIT, the pure parts: no I/O, only ARM JSON in and out.

In ``defender`` enforcement jitbot does not write NSG rules; it keeps Defender's JIT policy
for each VM in line with the jitbot policy and asks Defender to open ports
(``initiate``). This module holds the rules of that game, as Defender plays it in
api-version 2020-01-01:

- which Defender policy covers a VM (found by listing the policies of the VM's resource
  group and region, whatever their names), and the name of a new one, within Defender's
  limit of 56 characters for the policy name plus the VM name;
- the whole-body PUT: the ``virtualMachines`` list is replaced as a whole, so the VM's
  entry is merged into what was read, keeping every other VM's entry;
- the source a request names must equal an entry of the policy (``*`` matches
  anything); a single address inside an allowed range is a known Defender refusal, so
  jitbot refuses it first and says what to request instead;
- a request read back from the policy: each port is ``Initiating``, ``Initiated`` or
  ``Revoked`` (reason ``Expired``, ``UserRequested`` or ``NewerRequestInitiated``);
  values Defender may add later are tolerated and reported as unknown;
- Defender's refusals as sentences a chat user can act on.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from jitcore.errors import CloudError, InvalidSource, RequestRejected

NAME_LIMIT = 56
"""Defender refuses a policy whose name plus a covered VM's name exceeds 56 characters."""
NEW_POLICY_NAMES = ("default", "jitbot", "jit", "j")
"""Names tried, in order, for a new Defender policy; ``default`` is what the portal uses."""
REQUIRED_TIER = "Standard"
REQUIRED_SUB_PLAN = "P2"
ANY_SOURCE = "*"
INITIATE_ACTIONS = (
    "Microsoft.Security/locations/jitNetworkAccessPolicies/read",
    "Microsoft.Security/locations/jitNetworkAccessPolicies/write",
    "Microsoft.Security/locations/jitNetworkAccessPolicies/initiate/action",
    "Microsoft.Compute/virtualMachines/read",
)
"""What jitbot's own Azure identity needs at the VM to sync policies and initiate."""
_ISO_DURATION = re.compile(
    r"P(?:(?P<days>\d+)D)?(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?"
    r"(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?",
    re.IGNORECASE,
)


class DefenderNameTooLong(RequestRejected):
    """No Defender policy name fits with the VM's name in Defender's 56 characters."""

    def __init__(self, vm_name: str, policy_name: str | None = None) -> None:
        where = f"the Defender policy `{policy_name}`" if policy_name else "any Defender policy"
        super().__init__(
            f"the VM name `{vm_name}` is too long for {where}: Defender for Cloud allows at "
            f"most {NAME_LIMIT} characters for the policy name plus the VM name"
        )
        self.vm_name = vm_name


class PlanMissing(RequestRejected):
    """The subscription lacks Defender for Servers Plan 2, which Defender's JIT needs."""


# -- plan ------------------------------------------------------------------------------


def plan_refusal(subscription_id: str, pricing: dict[str, Any] | None) -> str | None:
    """Why a subscription's ``VirtualMachines`` pricing does not allow Defender JIT, or None.

    JIT VM access is part of Defender for Servers Plan 2: tier ``Standard`` with sub-plan
    ``P2``. Plan 1 (``P1``) and the free tier do not include it.
    """
    properties = (pricing or {}).get("properties") or {}
    tier = str(properties.get("pricingTier") or "")
    sub_plan = str(properties.get("subPlan") or "")
    if tier.lower() == REQUIRED_TIER.lower() and sub_plan.upper() == REQUIRED_SUB_PLAN:
        return None
    found = f"tier {tier or 'unknown'}" + (f", sub-plan {sub_plan}" if sub_plan else "")
    return (
        f"subscription {subscription_id} does not have Defender for Servers Plan 2 "
        f"(pricing VirtualMachines is {found}; JIT needs tier Standard with sub-plan P2)"
    )


# -- durations and times ---------------------------------------------------------------


def iso_duration(value: timedelta) -> str:
    """A duration as ISO 8601 (``PT3H``, ``PT1H30M``), as Defender writes them."""
    seconds = int(value.total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    text = "PT"
    if hours:
        text += f"{hours}H"
    if minutes:
        text += f"{minutes}M"
    if seconds or text == "PT":
        text += f"{seconds}S"
    return text


def parse_iso_duration(text: str) -> timedelta | None:
    match = _ISO_DURATION.fullmatch(text.strip()) if text else None
    if match is None or not any(match.groupdict().values()):
        return None
    parts = {k: float(v) for k, v in match.groupdict().items() if v}
    return timedelta(**parts)


def utc_text(moment: datetime) -> str:
    """``2026-12-04T19:30:00.0000000Z``: UTC with seven fractional digits, as Azure writes."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond:06d}0Z"


def parse_utc(text: str | None) -> datetime | None:
    """A UTC time as Azure writes it (fractions of any length, ``Z`` or an offset)."""
    if not text:
        return None
    match = re.fullmatch(
        r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})?", text.strip()
    )
    if match is None:
        return None
    base, fraction, zone = match.groups()
    micro = int((fraction or "0")[:6].ljust(6, "0"))
    moment = datetime.fromisoformat(base).replace(microsecond=micro)
    if zone and zone != "Z":
        return datetime.fromisoformat(f"{base}{zone}").replace(microsecond=micro).astimezone(UTC)
    return moment.replace(tzinfo=UTC)


# -- sources ---------------------------------------------------------------------------


def wire_source(prefix: str) -> str:
    """A canonical prefix as Defender expects it: a single address bare, a range as CIDR."""
    network = ipaddress.ip_network(prefix)
    if network.num_addresses == 1:
        return str(network.network_address)
    return str(network)


def check_defender_source(
    prefix: str, allowed: Iterable[str], vm_name: str, widest_v4: int, widest_v6: int
) -> None:
    """Refuse a source that Defender would refuse for a policy allowing ``allowed``.

    ``allowed`` empty means ``*``: any source. Otherwise Defender accepts a source only
    when it equals one of the policy's prefixes exactly: a single address or a smaller
    range inside an allowed range is refused (a known Defender refusal), so the error
    names what to request instead.
    """
    entries = [ipaddress.ip_network(a) for a in allowed]
    if not entries:
        return
    network = ipaddress.ip_network(prefix)
    same_family = [e for e in entries if e.version == network.version]
    if any(network == entry for entry in same_family):
        return
    inside = [e for e in same_family if network.subnet_of(e)]  # type: ignore[arg-type]
    listed = ", ".join(str(e) for e in entries)
    if not inside:
        raise InvalidSource(
            prefix,
            f"Defender for Cloud only opens {vm_name} for the sources its JIT policy lists: "
            + listed,
        )
    outer = inside[0]
    what = "a single address" if network.num_addresses == 1 else "a range"
    widest = widest_v4 if network.version == 4 else widest_v6
    if outer.prefixlen >= widest:
        advice = f"request `from {outer}` instead"
    else:
        advice = (
            f"{outer} is wider than this policy lets anyone request (/{widest}), so ask an "
            "admin to list your own address or range in the policy"
        )
    raise InvalidSource(
        prefix,
        f"Defender for Cloud refuses {what} inside an allowed range: the source must be "
        f"exactly one of the policy's prefixes ({listed}); {advice}",
    )


# -- policies --------------------------------------------------------------------------


def vm_entry(
    vm_id: str,
    ports: Iterable[tuple[int, str, timedelta]],
    allowed_sources: list[str],
) -> dict[str, Any]:
    """The ``virtualMachines`` entry for a VM: each (port, protocol, maximum duration)
    with the policy's allowed sources (``*`` when it names none)."""
    rules = []
    for number, protocol, longest in ports:
        rule: dict[str, Any] = {
            "number": number,
            "protocol": protocol.upper() if protocol != "*" else "*",
            "maxRequestAccessDuration": iso_duration(longest),
        }
        if len(allowed_sources) > 1:
            rule["allowedSourceAddressPrefixes"] = [wire_source(s) for s in allowed_sources]
        else:
            rule["allowedSourceAddressPrefix"] = (
                wire_source(allowed_sources[0]) if allowed_sources else ANY_SOURCE
            )
        rules.append(rule)
    return {"id": vm_id, "ports": rules}


def _same_id(left: str, right: str) -> bool:
    return left.strip("/").lower() == right.strip("/").lower()


def covers(policy: dict[str, Any], vm_id: str) -> bool:
    machines = (policy.get("properties") or {}).get("virtualMachines") or []
    return any(_same_id(str(m.get("id", "")), vm_id) for m in machines)


def entry_of(policy: dict[str, Any], vm_id: str) -> dict[str, Any] | None:
    machines = (policy.get("properties") or {}).get("virtualMachines") or []
    return next((m for m in machines if _same_id(str(m.get("id", "")), vm_id)), None)


def choose_policy(
    policies: list[dict[str, Any]], vm_id: str, vm_name: str
) -> tuple[str, dict[str, Any] | None]:
    """Which Defender policy of the VM's resource group and region to put the VM in:
    (name, the policy as read) for an existing one, (name, None) for a new one.

    The policy that already lists the VM wins; else the first existing one whose name
    fits with the VM's name in 56 characters; else a new policy with a free name that
    fits. Raises DefenderNameTooLong when no name fits.
    """
    for policy in policies:
        if covers(policy, vm_id):
            return str(policy["name"]), policy
    for policy in policies:
        if len(str(policy.get("name", ""))) + len(vm_name) <= NAME_LIMIT:
            return str(policy["name"]), policy
    taken = {str(p.get("name", "")).lower() for p in policies}
    for name in NEW_POLICY_NAMES:
        if name not in taken and len(name) + len(vm_name) <= NAME_LIMIT:
            return name, None
    raise DefenderNameTooLong(vm_name)


def _port_key(rule: dict[str, Any]) -> tuple[Any, ...]:
    prefixes = rule.get("allowedSourceAddressPrefixes")
    if not prefixes:
        single = rule.get("allowedSourceAddressPrefix")
        prefixes = [single] if single else []
    longest = parse_iso_duration(str(rule.get("maxRequestAccessDuration") or ""))
    return (
        int(rule.get("number", -1)),
        str(rule.get("protocol", "")).upper(),
        tuple(sorted(str(p).lower() for p in prefixes)),
        longest,
    )


def entry_matches(current: dict[str, Any] | None, wanted: dict[str, Any]) -> bool:
    """Whether the VM's entry in Defender already says what the jitbot policy says."""
    if current is None:
        return False
    have = sorted(_port_key(r) for r in current.get("ports") or [])
    want = sorted(_port_key(r) for r in wanted.get("ports") or [])
    return have == want


def merged_body(existing: dict[str, Any] | None, wanted: dict[str, Any]) -> dict[str, Any]:
    """The body of the PUT that sets the VM's entry and keeps everything else.

    A PUT replaces the whole ``virtualMachines`` list, so every other VM's entry is sent
    back exactly as read; the VM's own entry keeps its extra fields (a firewall's
    ``publicIpAddress``) with jitbot's ports. The request history is sent back as read.
    """
    properties = dict((existing or {}).get("properties") or {})
    machines = [dict(m) for m in properties.get("virtualMachines") or []]
    for index, machine in enumerate(machines):
        if _same_id(str(machine.get("id", "")), wanted["id"]):
            machines[index] = {**machine, "ports": wanted["ports"]}
            break
    else:
        machines.append(wanted)
    body_properties: dict[str, Any] = {"virtualMachines": machines}
    if properties.get("requests"):
        body_properties["requests"] = properties["requests"]
    return {"kind": (existing or {}).get("kind") or "Basic", "properties": body_properties}


def lost_entries(before: dict[str, Any] | None, after: dict[str, Any]) -> list[str]:
    """Ids of VMs listed before a PUT that the policy no longer lists after it."""
    old = (before or {}).get("properties", {}).get("virtualMachines") or []
    return [str(m.get("id")) for m in old if not covers(after, str(m.get("id", "")))]


# -- initiate and follow-up ------------------------------------------------------------


def justification(request_id: int, requester: str, approver: str, reason: str) -> str:
    """The justification Defender records: names the Slack requester and approver, and
    carries ``jitbot request #<id>`` so the request can be found again after a crash."""
    text = (
        f"jitbot request #{request_id}: requested in Slack by {requester}, approved by {approver}"
    )
    if reason:
        text += f": {reason}"
    return text[:500]


def initiate_body(
    vm_id: str, ports: Iterable[int], source_prefix: str, ends_at: datetime, why: str
) -> dict[str, Any]:
    """The initiate body; the source is always sent (left out, Defender would open the
    port for the address the call comes from, jitbot's own)."""
    return {
        "virtualMachines": [
            {
                "id": vm_id,
                "ports": [
                    {
                        "number": port,
                        "endTimeUtc": utc_text(ends_at),
                        "allowedSourceAddressPrefix": wire_source(source_prefix),
                    }
                    for port in ports
                ],
            }
        ],
        "justification": why,
    }


class PortState(enum.StrEnum):
    """Where a Defender request stands, from the statuses of its ports."""

    OPENING = "opening"
    """Defender accepted it (``Initiating``) and has not reported the ports open yet."""
    OPEN = "open"
    """Every port is ``Initiated``."""
    CLOSED = "closed"
    """Every port is ``Revoked``; ``reason`` says why."""
    UNKNOWN = "unknown"
    """A status jitbot does not know; treated as possibly open."""
    MISSING = "missing"
    """The policy holds no such request (never made, or forgotten by Defender)."""


CLOSE_REASONS = {
    "expired": "expired",
    "userrequested": "revoked",
    "newerrequestinitiated": "superseded",
}


@dataclass(frozen=True)
class DefenderStatus:
    state: PortState
    reason: str | None = None
    """For CLOSED: ``expired``, ``revoked``, ``superseded``, or Defender's own word."""
    detail: str = ""
    """The statuses as Defender gave them, for the audit log."""


def find_request(
    policy: dict[str, Any],
    vm_id: str,
    started_at: datetime | None = None,
    marker: str | None = None,
) -> dict[str, Any] | None:
    """A request in the policy's history for ``vm_id``: the one started at
    ``started_at`` (what initiate answered), else the latest whose justification starts
    with ``marker``."""
    found = None
    for request in (policy.get("properties") or {}).get("requests") or []:
        machines = request.get("virtualMachines") or []
        if not any(_same_id(str(m.get("id", "")), vm_id) for m in machines):
            continue
        if started_at is not None and parse_utc(request.get("startTimeUtc")) == started_at:
            return request
        if marker is not None and str(request.get("justification", "")).startswith(marker):
            found = request
    return found


def request_marker(request_id: int) -> str:
    return f"jitbot request #{request_id}:"


def status_of(request: dict[str, Any] | None, vm_id: str, ports: Iterable[int]) -> DefenderStatus:
    """Where a Defender request stands for the given VM and ports."""
    if request is None:
        return DefenderStatus(PortState.MISSING)
    wanted = set(ports)
    statuses: list[tuple[str, str]] = []
    for machine in request.get("virtualMachines") or []:
        if not _same_id(str(machine.get("id", "")), vm_id):
            continue
        for port in machine.get("ports") or []:
            if int(port.get("number", -1)) in wanted:
                statuses.append((str(port.get("status", "")), str(port.get("statusReason", ""))))
    detail = ", ".join(f"{s}/{r}" for s, r in statuses)
    if not statuses:
        return DefenderStatus(PortState.MISSING, detail=detail)
    kinds = {s.lower() for s, _ in statuses}
    if kinds == {"revoked"}:
        reasons = [CLOSE_REASONS.get(r.lower(), r or "unknown") for _, r in statuses]
        for preferred in ("superseded", "revoked", "expired"):
            if preferred in reasons:
                return DefenderStatus(PortState.CLOSED, preferred, detail)
        return DefenderStatus(PortState.CLOSED, reasons[0], detail)
    if kinds <= {"initiated"}:
        return DefenderStatus(PortState.OPEN, detail=detail)
    if kinds <= {"initiated", "initiating", "revoked"} and "initiating" in kinds:
        return DefenderStatus(PortState.OPENING, detail=detail)
    if kinds <= {"initiated", "revoked"}:
        return DefenderStatus(PortState.OPEN, detail=detail)
    return DefenderStatus(PortState.UNKNOWN, detail=detail)


# -- errors ----------------------------------------------------------------------------


def explain_error(error: CloudError, vm_name: str, writing_policy: bool = False) -> str:
    """A refusal from Defender as a chat sentence: what happened and what to do.

    ``writing_policy``: the refusal answered jitbot's write of the Defender JIT policy,
    not an initiate.
    """
    code = (error.code or "").lower()
    if code == "requestdisallowedbypolicy":
        return (
            f"an Azure Policy assignment refused the Defender JIT change for {vm_name} "
            f"(RequestDisallowedByPolicy): {_azure_detail(error)}. Ask the owner of that "
            "policy assignment for an exemption"
        )
    if error.status == 403 or code in ("authorizationfailed", "linkedauthorizationfailed"):
        return (
            f"Defender for Cloud refused jitbot's own Azure identity for {vm_name} "
            f"({error.code or 'HTTP 403'}): it needs "
            + ", ".join(f"`{a}`" for a in INITIATE_ACTIONS)
            + " at the VM. Ask an Azure administrator to grant them (docs/defender.md)"
        )
    if code == "jitrequiresdefenderforserversplan2":
        return (
            f"Defender for Cloud refused the request for {vm_name}: the subscription no "
            f"longer has Defender for Servers Plan 2 ({_azure_detail(error)})"
        )
    client_error = error.status == 400 or code in ("badrequest", "invalidparameter", "invalidinput")
    if client_error and writing_policy:
        return (
            f"Defender for Cloud refused jitbot's JIT policy for {vm_name} "
            f"({error.code or 'HTTP 400'}): {_azure_detail(error)}"
        )
    if client_error:
        return (
            f"Defender for Cloud refused the request for {vm_name} as outside its JIT "
            f"policy ({error.code or 'HTTP 400'}): {_azure_detail(error)}"
        )
    if error.status == 404 or code in ("notfound", "resourcenotfound"):
        return (
            f"Defender for Cloud has no JIT policy for {vm_name} any more ({error.code or 404});"
            " ask again and jitbot writes it anew"
        )
    return f"Defender for Cloud failed for {vm_name}: {error.message}"


def _azure_detail(error: CloudError) -> str:
    """Azure's own message, without jitbot's "Azure refused to …: CODE:" prefix."""
    text = error.message
    if error.code and f"{error.code}: " in text:
        text = text.split(f"{error.code}: ", 1)[1]
    return text.rstrip(".")
