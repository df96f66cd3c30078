"""Microsoft.Security: Defender for Cloud JIT network access policies and pricings.

JIT policies follow ``jitNetworkAccessPolicies.2020-01-01.json`` and its examples (the
api-version azure-mgmt-security 7.0.0 sends for ``jit_network_access_policies``); pricings
follow ``Pricings_Get_VirtualMachines.json`` (2024-01-01, the SDK's ``pricings`` version).

What the stand-in does, like Defender:

- ``PUT`` of a policy replaces its whole ``virtualMachines`` list after validation (VMs that
  exist in the policy's resource group and location, ports 1-65535, protocol TCP/UDP/*,
  ``maxRequestAccessDuration`` PT5M-PT24H, one of ``allowedSourceAddressPrefix`` and
  ``allowedSourceAddressPrefixes``, policy name plus VM name at most 56 characters). It writes
  Defender's deny rules (``SecurityCenter-JITRule-<n>-<HASH>``, one per VM, port and NSG) into
  the NSGs on each VM's path (NIC and subnet), after any existing rule that already covers the
  port, else at priority 1000 or the next free one. Ports or VMs dropped from the policy lose
  their deny rules; ``DELETE`` removes every rule the policy wrote.
- ``POST .../initiate`` checks every VM and port against the policy, the end time (future, at
  most the port's ``maxRequestAccessDuration`` ahead) and the source: it must equal one of the
  port's allowed prefixes exactly, unless the policy allows ``*``. A missing source means the
  caller's own address, taken from the HTTP connection. It answers 202 with the request in
  status ``Initiating``; after ``apply delay`` seconds the allow rules are written (lowest free
  priorities from 100, so above every deny) and the ports become ``Initiated``. At
  ``endTimeUtc`` the allow rules go and the ports become ``Revoked``/``Expired``; a newer
  request for the same VM and port revokes the older one (``NewerRequestInitiated``).
- The subscription must have Defender for Servers Plan 2 (pricing ``VirtualMachines``,
  ``Standard``/``P2``) for policies to be written or initiated.

Error codes: Defender's real codes for these refusals are not published; the codes below are
modelled and listed in ``docs/sandbox-defender.md``. Time-driven changes run from
:func:`tick`, which the server calls before every request and from its clock thread.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import ipaddress
import re
import zlib
from collections.abc import Iterable, Mapping
from typing import Any

from sandbox.arm import network
from sandbox.arm import network_rules as nsg_rules
from sandbox.arm.errors import ArmError, bad_request, invalid_request_format
from sandbox.arm.provider import Provider, Request, Response, Route
from sandbox.arm.state import Store, id_key, new_etag

NAMESPACE = "Microsoft.Security"
JIT_API_VERSIONS = ("2020-01-01",)
PRICING_API_VERSIONS = ("2024-01-01",)
POLICY_TYPE = "Microsoft.Security/locations/jitNetworkAccessPolicies"
PRICING_TYPE = "Microsoft.Security/pricings"
VM_TYPE = "Microsoft.Compute/virtualMachines"

RULE_PREFIX = "SecurityCenter-JITRule"
NAME_LIMIT = 56
MIN_DURATION = datetime.timedelta(minutes=5)
MAX_DURATION = datetime.timedelta(hours=24)
DENY_TOP_PRIORITY = 1000
DEFAULT_APPLY_DELAY = 1.0
DEFAULT_REQUESTOR = "sandbox-caller"
PROTOCOLS = {"tcp": "TCP", "udp": "UDP", "*": "*"}
NSG_PROTOCOLS = {"TCP": "Tcp", "UDP": "Udp", "*": "*"}

INITIATING = "Initiating"
INITIATED = "Initiated"
REVOKED = "Revoked"
USER_REQUESTED = "UserRequested"
EXPIRED = "Expired"
NEWER_REQUEST = "NewerRequestInitiated"

PRICING_TIERS = ("Free", "Standard")
VM_SUB_PLANS = ("P1", "P2")
# Plans whose pricing a subscription has (Free unless seeded or updated).
PLAN_NAMES = (
    "VirtualMachines",
    "SqlServers",
    "AppServices",
    "StorageAccounts",
    "SqlServerVirtualMachines",
    "KeyVaults",
    "Dns",
    "Arm",
    "OpenSourceRelationalDatabases",
    "Containers",
    "CosmosDbs",
    "CloudPosture",
    "Api",
)

SETTINGS_KEY = "security"

_VM_ID = re.compile(
    r"/subscriptions/([^/]+)/resourceGroups/([^/]+)/providers/Microsoft\.Compute/"
    r"virtualMachines/([^/]+)",
    re.IGNORECASE,
)
_DURATION = re.compile(
    r"P(?:(\d+)D)?(?:T(?=\d)(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?", re.IGNORECASE
)
_TIME = re.compile(
    r"(\d{4}-\d{2}-\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:?\d{2})?",
    re.IGNORECASE,
)


# ---------------------------------------------------------------------------------- settings


def settings(store: Store) -> dict[str, Any]:
    """The provider's per-server settings: apply delay, default requestor."""
    return store.settings.setdefault(
        SETTINGS_KEY, {"applyDelaySeconds": DEFAULT_APPLY_DELAY, "requestor": DEFAULT_REQUESTOR}
    )


def set_apply_delay(store: Store, seconds: float) -> None:
    """Seconds between an accepted initiate and Defender's NSG change (tests make it short)."""
    if seconds < 0:
        raise ValueError(f"the apply delay must be 0 or more seconds, got {seconds}")
    settings(store)["applyDelaySeconds"] = float(seconds)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


# ---------------------------------------------------------------------------------- time


def format_time(moment: datetime.datetime) -> str:
    """ARM's form of a UTC time, with seven fraction digits: ``2018-07-12T08:53:03.3658798Z``."""
    moment = moment.astimezone(datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond:06d}0Z"


def parse_time(value: Any) -> datetime.datetime | None:
    """An ISO-8601 date-time (any number of fraction digits, ``Z`` or an offset), else None."""
    if not isinstance(value, str):
        return None
    match = _TIME.fullmatch(value.strip())
    if not match:
        return None
    day, hour, minute, second, fraction, zone = match.groups()
    try:
        moment = datetime.datetime.fromisoformat(f"{day}T{hour}:{minute}:{second}")
    except ValueError:
        return None
    if fraction:
        moment += datetime.timedelta(microseconds=int((fraction + "000000")[:6]))
    offset = datetime.timedelta(0)
    if zone and zone.upper() != "Z":
        sign = -1 if zone[0] == "-" else 1
        digits = zone[1:].replace(":", "")
        offset = sign * datetime.timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
    return moment.replace(tzinfo=datetime.timezone(offset)).astimezone(datetime.timezone.utc)


def parse_duration(value: Any) -> datetime.timedelta | None:
    """An ISO-8601 duration of days, hours, minutes and seconds (``PT3H``, ``P1D``), else None."""
    if not isinstance(value, str) or value.upper() in ("P", "PT"):
        return None
    match = _DURATION.fullmatch(value.strip())
    if not match or not any(match.groups()):
        return None
    days, hours, minutes, seconds = match.groups()
    return datetime.timedelta(
        days=int(days or 0),
        hours=int(hours or 0),
        minutes=int(minutes or 0),
        seconds=float(seconds or 0),
    )


# ---------------------------------------------------------------------------------- rendering


def _public(value: Any) -> Any:
    """A record without its bookkeeping keys (those starting with ``_``)."""
    if isinstance(value, dict):
        return {key: _public(item) for key, item in value.items() if not key.startswith("_")}
    if isinstance(value, list):
        return [_public(item) for item in value]
    return value


def render_policy(policy: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "kind": policy["kind"],
        "properties": {
            "virtualMachines": copy.deepcopy(policy["virtualMachines"]),
            "requests": _public(policy["requests"]),
            "provisioningState": "Succeeded",
        },
        "id": policy["id"],
        "name": policy["name"],
        "type": POLICY_TYPE,
        "location": policy["location"],
    }


def render_pricing(pricing: Mapping[str, Any]) -> dict[str, Any]:
    properties: dict[str, Any] = {"pricingTier": pricing["pricingTier"]}
    if pricing.get("subPlan"):
        properties["subPlan"] = pricing["subPlan"]
    properties["freeTrialRemainingTime"] = "PT0S"
    if pricing["pricingTier"] == "Standard":
        properties["enablementTime"] = pricing["enablementTime"]
        properties["enforce"] = "False"
        properties["resourcesCoverageStatus"] = "FullyCovered"
        properties["extensions"] = copy.deepcopy(pricing.get("extensions", []))
    return {
        "id": pricing["id"],
        "name": pricing["name"],
        "type": PRICING_TYPE,
        "properties": properties,
    }


# ---------------------------------------------------------------------------------- lookups


def _policy_id(request: Request) -> str:
    return request.store.resource_id(
        request.group,
        NAMESPACE,
        "locations",
        request.params["ascLocation"],
        "jitNetworkAccessPolicies",
        request.params["jitNetworkAccessPolicyName"],
    )


def _policy(request: Request) -> dict[str, Any]:
    policy = request.store.get(_policy_id(request))
    if policy is None:
        name = request.params["jitNetworkAccessPolicyName"]
        message = (
            f"The Resource '{POLICY_TYPE}/{name}' under resource group "
            f"'{request.group.name}' was not found."
        )
        raise ArmError(404, "ResourceNotFound", message)
    return policy


def _policies(store: Store, group: str | None, location: str | None) -> list[dict[str, Any]]:
    return [
        policy
        for policy in store.of_type(POLICY_TYPE, group)
        if location is None or policy["location"].lower() == location.lower()
    ]


def pricing_id(store: Store, name: str) -> str:
    return f"/subscriptions/{store.subscription_id}/providers/{NAMESPACE}/pricings/{name}"


def pricing(store: Store, name: str) -> dict[str, Any]:
    """The subscription's pricing of a plan (Free when nothing set it)."""
    canonical = next((plan for plan in PLAN_NAMES if plan.lower() == name.lower()), None)
    if canonical is None:
        message = f"The pricing '{name}' was not found. Known plans: {', '.join(PLAN_NAMES)}."
        raise ArmError(404, "PricingNotFound", message)
    record = store.get(pricing_id(store, canonical))
    if record is not None:
        return record
    return {"id": pricing_id(store, canonical), "name": canonical, "pricingTier": "Free"}


def _require_plan2(store: Store) -> None:
    record = pricing(store, "VirtualMachines")
    if record["pricingTier"] != "Standard" or record.get("subPlan") != "P2":
        shown = record["pricingTier"] + (f"/{record['subPlan']}" if record.get("subPlan") else "")
        message = (
            f"Just-in-time VM access requires Microsoft Defender for Servers Plan 2 on "
            f"subscription '{store.subscription_id}'; its VirtualMachines pricing is {shown}."
        )
        raise bad_request("JitRequiresDefenderForServersPlan2", message)


# ---------------------------------------------------------------------------------- validation


def _invalid(code: str, message: str) -> ArmError:
    return bad_request(code, message)


def _is_prefix(value: Any) -> bool:
    """An IPv4/IPv6 address or a CIDR with zero host bits."""
    if not isinstance(value, str) or not value or value.strip() != value:
        return False
    try:
        ipaddress.ip_network(value, strict=True)
    except ValueError:
        return False
    return True


def _validate_vm(
    store: Store, vm_id: Any, group_name: str, location: str, policy_name: str
) -> dict[str, Any]:
    if not isinstance(vm_id, str) or not vm_id:
        raise _invalid("JitPolicyInvalidVirtualMachine", "Each virtual machine needs an 'id'.")
    match = _VM_ID.fullmatch(vm_id.rstrip("/"))
    if not match:
        message = (
            f"'{vm_id}' is not a virtual machine resource id (/subscriptions/{{id}}/resourceGroups"
            "/{group}/providers/Microsoft.Compute/virtualMachines/{name})."
        )
        raise _invalid("JitPolicyInvalidVirtualMachine", message)
    subscription, group, name = match.groups()
    vm = store.get(vm_id)
    if subscription.lower() != store.subscription_id.lower() or vm is None:
        message = f"The virtual machine '{vm_id}' was not found."
        raise _invalid("JitPolicyVirtualMachineNotFound", message)
    if group.lower() != group_name.lower():
        message = (
            f"The virtual machine '{name}' is in resource group '{group}'; a JIT policy of "
            f"resource group '{group_name}' can only hold virtual machines of that group."
        )
        raise _invalid("JitPolicyVirtualMachineOutOfScope", message)
    if vm["location"].lower() != location.lower():
        message = (
            f"The virtual machine '{name}' is in location '{vm['location']}'; a JIT policy in "
            f"location '{location}' can only hold virtual machines of that location."
        )
        raise _invalid("JitPolicyVirtualMachineOutOfScope", message)
    if len(policy_name) + len(vm["name"]) > NAME_LIMIT:
        message = (
            f"The JIT policy name '{policy_name}' and the virtual machine name '{vm['name']}' "
            f"together are {len(policy_name) + len(vm['name'])} characters long; at most "
            f"{NAME_LIMIT} are allowed."
        )
        raise _invalid("JitPolicyNameTooLong", message)
    if not vm_paths(store, vm["id"]):
        message = (
            f"The virtual machine '{name}' has no network security group on its network "
            "interface or subnet; just-in-time access needs one to enforce its rules."
        )
        raise _invalid("JitPolicyVirtualMachineWithoutNetworkSecurityGroup", message)
    return vm


def _validate_port_rule(vm_name: str, item: Any) -> dict[str, Any]:
    if not isinstance(item, Mapping):
        raise invalid_request_format()
    number = item.get("number")
    if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= 65535:
        message = (
            f"Port number '{number}' of virtual machine '{vm_name}' is invalid; a port is a "
            "number from 1 to 65535."
        )
        raise _invalid("JitPolicyInvalidPort", message)
    protocol = PROTOCOLS.get(str(item.get("protocol", "")).lower())
    if protocol is None:
        message = (
            f"Protocol '{item.get('protocol')}' of port {number} of virtual machine '{vm_name}' "
            "is invalid; allowed values are TCP, UDP and *."
        )
        raise _invalid("JitPolicyInvalidProtocol", message)
    duration_text = item.get("maxRequestAccessDuration")
    duration = parse_duration(duration_text)
    if duration is None or not MIN_DURATION <= duration <= MAX_DURATION:
        message = (
            f"maxRequestAccessDuration '{duration_text}' of port {number} of virtual machine "
            f"'{vm_name}' is invalid; it must be an ISO 8601 duration from PT5M to PT24H."
        )
        raise _invalid("JitPolicyInvalidMaxRequestAccessDuration", message)
    rule: dict[str, Any] = {"number": number, "protocol": protocol}
    single = item.get("allowedSourceAddressPrefix")
    plural = item.get("allowedSourceAddressPrefixes")
    if single is not None and plural is not None:
        message = (
            f"Port {number} of virtual machine '{vm_name}' sets both allowedSourceAddressPrefix "
            "and allowedSourceAddressPrefixes; set only one of them."
        )
        raise _invalid("JitPolicyInvalidSourceAddress", message)
    if single is None and plural is None:
        message = (
            f"Port {number} of virtual machine '{vm_name}' needs allowedSourceAddressPrefix "
            "('*', an IP address or a CIDR) or allowedSourceAddressPrefixes."
        )
        raise _invalid("JitPolicyInvalidSourceAddress", message)
    if single is not None:
        if single != "*" and not _is_prefix(single):
            message = (
                f"allowedSourceAddressPrefix '{single}' of port {number} of virtual machine "
                f"'{vm_name}' is not '*', an IP address or a CIDR without host bits."
            )
            raise _invalid("JitPolicyInvalidSourceAddress", message)
        rule["allowedSourceAddressPrefix"] = single
    else:
        if not isinstance(plural, list) or not plural or not all(_is_prefix(p) for p in plural):
            message = (
                f"allowedSourceAddressPrefixes {plural!r} of port {number} of virtual machine "
                f"'{vm_name}' must be a non-empty list of IP addresses or CIDRs ('*' is only "
                "allowed in allowedSourceAddressPrefix)."
            )
            raise _invalid("JitPolicyInvalidSourceAddress", message)
        rule["allowedSourceAddressPrefixes"] = list(plural)
    rule["maxRequestAccessDuration"] = duration_text
    return rule


def validate_virtual_machines(
    store: Store, items: Any, group_name: str, location: str, policy_name: str, policy_id: str
) -> list[dict[str, Any]]:
    """The policy's ``virtualMachines`` as stored, or the 400 Defender would answer."""
    if not isinstance(items, list) or not all(isinstance(item, Mapping) for item in items):
        message = "properties.virtualMachines is required and must be a list of virtual machines."
        raise _invalid("InvalidRequestFormat", message)
    result: list[dict[str, Any]] = []
    seen: set[str] = set()
    for item in items:
        vm = _validate_vm(store, item.get("id"), group_name, location, policy_name)
        if id_key(vm["id"]) in seen:
            message = f"The virtual machine '{vm['name']}' is listed twice in the policy."
            raise _invalid("JitPolicyDuplicateVirtualMachine", message)
        seen.add(id_key(vm["id"]))
        owner = _owning_policy(store, vm["id"])
        if owner is not None and id_key(owner["id"]) != id_key(policy_id):
            message = (
                f"The virtual machine '{vm['name']}' is already protected by the JIT policy "
                f"'{owner['id']}'."
            )
            raise _invalid("JitPolicyVirtualMachineInAnotherPolicy", message)
        ports = item.get("ports")
        if not isinstance(ports, list) or not ports:
            message = f"Virtual machine '{vm['name']}' needs a non-empty list of ports."
            raise _invalid("JitPolicyInvalidPort", message)
        rules = [_validate_port_rule(vm["name"], port) for port in ports]
        numbers = [rule["number"] for rule in rules]
        duplicates = sorted({number for number in numbers if numbers.count(number) > 1})
        if duplicates:
            message = f"Virtual machine '{vm['name']}' lists port(s) {duplicates} twice."
            raise _invalid("JitPolicyDuplicatePort", message)
        entry: dict[str, Any] = {"id": item["id"], "ports": rules}
        if isinstance(item.get("publicIpAddress"), str):
            entry["publicIpAddress"] = item["publicIpAddress"]
        result.append(entry)
    return result


def _owning_policy(store: Store, vm_id: str) -> dict[str, Any] | None:
    for policy in store.of_type(POLICY_TYPE):
        if any(id_key(vm["id"]) == id_key(vm_id) for vm in policy["virtualMachines"]):
            return policy
    return None


# ---------------------------------------------------------------------------------- NSG changes


def vm_paths(store: Store, vm_id: str) -> list[tuple[dict[str, Any], str]]:
    """Each NSG on the VM's path (NIC, then subnet) with the VM address it protects there."""
    vm = store.get(vm_id)
    if vm is None:
        return []
    seen: dict[str, tuple[dict[str, Any], str]] = {}
    for nic_id in vm["nicIds"]:
        nic = store.get(nic_id)
        if nic is None:
            continue
        configs = nic["ipConfigurations"]
        primary = next((c for c in configs if c["primary"]), configs[0] if configs else None)
        if primary is None:
            continue
        candidates = [(nic["nsgId"], primary["privateIPAddress"])]
        for config in configs:
            subnet = store.get(config["subnetId"]) if config["subnetId"] else None
            if subnet is not None:
                candidates.append((subnet["nsgId"], config["privateIPAddress"]))
        for nsg_id, address in candidates:
            nsg = store.get(nsg_id) if nsg_id else None
            if nsg is not None and id_key(nsg["id"]) not in seen:
                seen[id_key(nsg["id"])] = (nsg, address)
    return list(seen.values())


def _rule_name(*parts: str) -> str:
    """``SecurityCenter-JITRule-<n>-<HASH>``: stable for the same inputs, unique enough."""
    text = "|".join(part.lower() for part in parts)
    number = zlib.crc32(parts[0].lower().encode())
    digest = hashlib.sha256(text.encode()).hexdigest()[:32].upper()
    return f"{RULE_PREFIX}-{number}-{digest}"


def _inbound_priorities(nsg: Mapping[str, Any]) -> set[int]:
    return {
        rule["properties"]["priority"]
        for rule in nsg["rules"].values()
        if rule["properties"]["direction"] == "Inbound"
    }


def _covers_port(properties: Mapping[str, Any], number: int, protocol: str) -> bool:
    other = properties["protocol"]
    if other != "*" and protocol != "*" and other.lower() != protocol.lower():
        return False
    ranges = properties.get("destinationPortRanges") or [properties.get("destinationPortRange")]
    for item in ranges:
        if item == "*":
            return True
        if not isinstance(item, str):
            continue
        low, _, high = item.partition("-")
        if int(low) <= number <= int(high or low):
            return True
    return False


def _deny_priority(nsg: Mapping[str, Any], number: int, protocol: str) -> int:
    """After every existing inbound rule covering the port, else from 1000; the first free."""
    covering = [
        rule["properties"]["priority"]
        for rule in nsg["rules"].values()
        if rule["properties"]["direction"] == "Inbound"
        and not rule["name"].startswith(RULE_PREFIX)
        and _covers_port(rule["properties"], number, protocol)
    ]
    start = max(covering) + 1 if covering else DENY_TOP_PRIORITY
    taken = _inbound_priorities(nsg)
    for priority in range(start, nsg_rules.PRIORITY_MAX + 1):
        if priority not in taken:
            return priority
    for priority in range(start - 1, nsg_rules.PRIORITY_MIN - 1, -1):
        if priority not in taken:
            return priority
    raise bad_request(
        "JitPolicyNoFreePriority",
        f"Network security group {nsg['id']} has no free inbound priority for a JIT rule.",
    )


def _allow_priority(nsg: Mapping[str, Any]) -> int | None:
    taken = _inbound_priorities(nsg)
    for priority in range(nsg_rules.PRIORITY_MIN, nsg_rules.PRIORITY_MAX + 1):
        if priority not in taken:
            return priority
    return None


def _write_rule(nsg: dict[str, Any], name: str, properties: Mapping[str, Any]) -> None:
    nsg["rules"][name.lower()] = network.new_rule(nsg["id"], name, properties, network.SUCCEEDED)
    nsg["etag"] = new_etag()


def _remove_rule(store: Store, nsg_id: str, name: str) -> None:
    nsg = store.get(nsg_id)
    if nsg is not None and nsg["rules"].pop(name.lower(), None) is not None:
        nsg["etag"] = new_etag()


def _port_properties(
    access: str, protocol: str, number: int, source: str, destination: str, priority: int
) -> dict[str, Any]:
    return {
        "protocol": NSG_PROTOCOLS[protocol],
        "sourcePortRange": "*",
        "destinationPortRange": str(number),
        "sourceAddressPrefix": source,
        "destinationAddressPrefix": destination,
        "access": access,
        "priority": priority,
        "direction": "Inbound",
    }


def sync_deny_rules(store: Store, policy: dict[str, Any]) -> None:
    """Make the NSGs hold exactly one Defender deny rule per VM, port and NSG of the policy."""
    wanted: dict[str, tuple[str, str, dict[str, Any], int, str, str]] = {}
    for vm in policy["virtualMachines"]:
        for nsg, address in vm_paths(store, vm["id"]):
            for port in vm["ports"]:
                name = _rule_name(policy["id"], vm["id"], str(port["number"]), nsg["id"], "deny")
                wanted[f"{id_key(nsg['id'])}|{name.lower()}"] = (
                    nsg["id"],
                    name,
                    nsg,
                    port["number"],
                    port["protocol"],
                    address,
                )
    for key, (nsg_id, name) in list(policy["_denyRules"].items()):
        if key not in wanted:
            _remove_rule(store, nsg_id, name)
            del policy["_denyRules"][key]
    for key, (nsg_id, name, nsg, number, protocol, address) in wanted.items():
        existing = nsg["rules"].get(name.lower())
        if existing is not None:
            props = existing["properties"]
            if (
                props["protocol"] == NSG_PROTOCOLS[protocol]
                and props["destinationAddressPrefix"] == address
            ):
                policy["_denyRules"][key] = (nsg_id, name)
                continue
            _remove_rule(store, nsg_id, name)
        if len(nsg["rules"]) >= nsg_rules.MAX_RULES:
            raise nsg_rules.count_limit_error()
        priority = _deny_priority(nsg, number, protocol)
        _write_rule(nsg, name, _port_properties("Deny", protocol, number, "*", address, priority))
        policy["_denyRules"][key] = (nsg_id, name)


def remove_policy_rules(store: Store, policy: Mapping[str, Any]) -> None:
    for nsg_id, name in policy["_denyRules"].values():
        _remove_rule(store, nsg_id, name)
    for _vm, port in _request_ports(policy):
        for nsg_id, name in port["_rules"]:
            _remove_rule(store, nsg_id, name)


# ---------------------------------------------------------------------------------- handlers


def get_policy(request: Request) -> Response:
    return Response(200, render_policy(_policy(request)))


def list_policies(request: Request) -> Response:
    group = request.params.get("resourceGroupName")
    location = request.params.get("ascLocation")
    values = [render_policy(policy) for policy in _policies(request.store, group, location)]
    return Response(200, {"value": values})


def put_policy(request: Request) -> Response:
    store = request.store
    _require_plan2(store)
    body = request.json_body()
    properties = body.get("properties")
    if not isinstance(properties, Mapping):
        raise _invalid("InvalidRequestFormat", "The policy body needs 'properties'.")
    kind = body.get("kind", "Basic")
    if not isinstance(kind, str):
        raise invalid_request_format()
    policy_id = _policy_id(request)
    existing = store.get(policy_id)
    name = request.params["jitNetworkAccessPolicyName"]
    location = request.params["ascLocation"]
    virtual_machines = validate_virtual_machines(
        store,
        properties.get("virtualMachines"),
        request.group.name,
        location,
        name,
        policy_id,
    )
    previous = copy.deepcopy(existing) if existing is not None else None
    if existing is None:
        policy: dict[str, Any] = {
            "id": policy_id,
            "name": name,
            "type": POLICY_TYPE,
            "location": location,
            "kind": kind,
            "virtualMachines": virtual_machines,
            "requests": [],
            "_denyRules": {},
        }
    else:
        policy = existing
        policy["kind"] = kind
        policy["virtualMachines"] = virtual_machines
    nsg_backup = _nsg_backup(store, policy)
    try:
        sync_deny_rules(store, policy)
    except ArmError:
        _restore_nsgs(store, nsg_backup)
        if previous is not None:
            store.put(previous)
        raise
    store.put(policy)
    return Response(200, render_policy(policy))


def _nsg_backup(store: Store, policy: Mapping[str, Any]) -> list[dict[str, Any]]:
    ids = {id_key(nsg_id) for nsg_id, _name in policy["_denyRules"].values()}
    for vm in policy["virtualMachines"]:
        ids.update(id_key(nsg["id"]) for nsg, _address in vm_paths(store, vm["id"]))
    return [copy.deepcopy(nsg) for nsg_id in ids if (nsg := store.get(nsg_id)) is not None]


def _restore_nsgs(store: Store, backup: Iterable[dict[str, Any]]) -> None:
    for nsg in backup:
        store.put(nsg)


def delete_policy(request: Request) -> Response:
    policy = request.store.get(_policy_id(request))
    if policy is None:
        return Response(204)
    remove_policy_rules(request.store, policy)
    request.store.delete(policy["id"])
    return Response(200)


def initiate(request: Request) -> Response:
    store = request.store
    policy = _policy(request)
    _require_plan2(store)
    body = request.json_body()
    now = _now()
    items = body.get("virtualMachines")
    if not isinstance(items, list) or not items or not all(isinstance(i, Mapping) for i in items):
        message = "The request needs a non-empty list 'virtualMachines' of {id, ports}."
        raise _invalid("InvalidRequestFormat", message)
    justification = body.get("justification")
    if justification is not None and not isinstance(justification, str):
        raise invalid_request_format()
    by_id = {id_key(vm["id"]): vm for vm in policy["virtualMachines"]}
    delay = settings(store)["applyDelaySeconds"]
    apply_at = (now + datetime.timedelta(seconds=delay)).timestamp()
    virtual_machines = []
    seen_vms: set[str] = set()
    for item in items:
        vm_id = item.get("id")
        configured = by_id.get(id_key(vm_id)) if isinstance(vm_id, str) else None
        if configured is None:
            message = (
                f"The virtual machine '{vm_id}' is not in the JIT policy '{policy['name']}'; "
                "request access only to its virtual machines."
            )
            raise _invalid("JitRequestVirtualMachineNotInPolicy", message)
        if id_key(vm_id) in seen_vms:
            message = f"The virtual machine '{vm_id}' is listed twice in the request."
            raise _invalid("JitRequestDuplicateVirtualMachine", message)
        seen_vms.add(id_key(vm_id))
        ports = item.get("ports")
        if not isinstance(ports, list) or not ports:
            message = f"The request for virtual machine '{vm_id}' needs a non-empty list of ports."
            raise _invalid("JitRequestInvalidPort", message)
        requested = []
        numbers: set[int] = set()
        for port in ports:
            entry = _validate_request_port(request, configured, port, now)
            if entry["number"] in numbers:
                message = f"Port {entry['number']} is requested twice for '{vm_id}'."
                raise _invalid("JitRequestInvalidPort", message)
            numbers.add(entry["number"])
            entry["_applyAt"] = apply_at
            requested.append(entry)
        virtual_machines.append({"id": configured["id"], "ports": requested})
    record: dict[str, Any] = {
        "virtualMachines": virtual_machines,
        "startTimeUtc": format_time(now),
        "requestor": _requestor(request),
    }
    if justification is not None:
        record["justification"] = justification
    policy["requests"].append(record)
    return Response(202, _public(record))


def _validate_request_port(
    request: Request, configured: Mapping[str, Any], port: Any, now: datetime.datetime
) -> dict[str, Any]:
    if not isinstance(port, Mapping):
        raise invalid_request_format()
    number = port.get("number")
    rule = next((r for r in configured["ports"] if r["number"] == number), None)
    if rule is None or isinstance(number, bool):
        allowed = ", ".join(str(r["number"]) for r in configured["ports"])
        message = (
            f"Port '{number}' is not in the JIT policy for virtual machine "
            f"'{configured['id']}'; the policy allows ports {allowed}."
        )
        raise _invalid("JitRequestPortNotInPolicy", message)
    end = parse_time(port.get("endTimeUtc"))
    if end is None:
        message = f"endTimeUtc '{port.get('endTimeUtc')}' of port {number} is not a UTC time."
        raise _invalid("JitRequestInvalidEndTime", message)
    limit = parse_duration(rule["maxRequestAccessDuration"])
    assert limit is not None
    if end <= now:
        message = f"endTimeUtc {port.get('endTimeUtc')} of port {number} is not in the future."
        raise _invalid("JitRequestInvalidEndTime", message)
    if end - now > limit:
        message = (
            f"endTimeUtc {port.get('endTimeUtc')} of port {number} is more than the policy's "
            f"maxRequestAccessDuration {rule['maxRequestAccessDuration']} from now."
        )
        raise _invalid("JitRequestDurationTooLong", message)
    source = port.get("allowedSourceAddressPrefix")
    if source is None:
        source = request.client_address or ""
    if source != "*" and not _is_prefix(source):
        message = (
            f"allowedSourceAddressPrefix '{source}' of port {number} is not an IP address or a "
            "CIDR without host bits."
        )
        raise _invalid("JitRequestInvalidSourceAddress", message)
    allowed = rule.get("allowedSourceAddressPrefixes") or [rule.get("allowedSourceAddressPrefix")]
    if "*" not in allowed and source not in allowed:
        message = (
            f"allowedSourceAddressPrefix '{source}' of port {number} is not allowed by the JIT "
            f"policy; it must be exactly one of: {', '.join(allowed)}."
        )
        raise _invalid("JitRequestSourceAddressNotAllowed", message)
    return {
        "number": number,
        "allowedSourceAddressPrefix": source,
        "endTimeUtc": format_time(end),
        "status": INITIATING,
        "statusReason": USER_REQUESTED,
        "_end": end.timestamp(),
        "_protocol": rule["protocol"],
        "_rules": [],
    }


def _requestor(request: Request) -> str:
    """Who made the request: the caller of the token, modelled by a setting (one token)."""
    return str(settings(request.store)["requestor"])


# ---------------------------------------------------------------------------------- time passes


def _request_ports(policy: Mapping[str, Any]) -> Iterable[tuple[dict[str, Any], dict[str, Any]]]:
    for record in policy["requests"]:
        for vm in record["virtualMachines"]:
            for port in vm["ports"]:
                yield vm, port


def tick(store: Store, now: float) -> None:
    """Apply what is due: open initiated ports, revoke superseded and expired ones."""
    for policy in list(store.of_type(POLICY_TYPE)):
        due = sorted(
            (
                (port["_applyAt"], index, vm, port)
                for index, (vm, port) in enumerate(_request_ports(policy))
                if port["status"] == INITIATING and port["_applyAt"] <= now
            ),
            key=lambda item: (item[0], item[1]),
        )
        for _at, _index, vm, port in due:
            _open(store, policy, vm, port, now)
        for _vm, port in _request_ports(policy):
            if port["status"] == INITIATED and port["_end"] <= now:
                _close(store, port, EXPIRED)


def _open(
    store: Store, policy: dict[str, Any], vm: Mapping[str, Any], port: dict[str, Any], now: float
) -> None:
    for other_vm, other in _request_ports(policy):
        if (
            other is not port
            and other["status"] == INITIATED
            and id_key(other_vm["id"]) == id_key(vm["id"])
            and other["number"] == port["number"]
        ):
            _close(store, other, NEWER_REQUEST)
    if port["_end"] <= now:
        port["status"] = REVOKED
        port["statusReason"] = EXPIRED
        return
    for nsg, address in vm_paths(store, vm["id"]):
        priority = _allow_priority(nsg)
        if priority is None:
            continue
        name = _rule_name(
            policy["id"], vm["id"], str(port["number"]), nsg["id"], "allow", str(port["_applyAt"])
        )
        properties = _port_properties(
            "Allow",
            port["_protocol"],
            port["number"],
            port["allowedSourceAddressPrefix"],
            address,
            priority,
        )
        _write_rule(nsg, name, properties)
        port["_rules"].append((nsg["id"], name))
    port["status"] = INITIATED


def _close(store: Store, port: dict[str, Any], reason: str) -> None:
    for nsg_id, name in port["_rules"]:
        _remove_rule(store, nsg_id, name)
    port["_rules"] = []
    port["status"] = REVOKED
    port["statusReason"] = reason


# ---------------------------------------------------------------------------------- pricings


def get_pricing(request: Request) -> Response:
    return Response(200, render_pricing(pricing(request.store, request.params["pricingName"])))


def list_pricings(request: Request) -> Response:
    values = [render_pricing(pricing(request.store, name)) for name in PLAN_NAMES]
    return Response(200, {"value": values})


def put_pricing(request: Request) -> Response:
    current = pricing(request.store, request.params["pricingName"])
    body = request.json_body()
    properties = body.get("properties")
    if not isinstance(properties, Mapping):
        raise _invalid("InvalidRequestFormat", "The pricing body needs 'properties'.")
    record = _pricing_record(request.store, current["name"], properties)
    request.store.put(record)
    return Response(200, render_pricing(record))


def _pricing_record(store: Store, name: str, properties: Mapping[str, Any]) -> dict[str, Any]:
    tier = next(
        (t for t in PRICING_TIERS if t.lower() == str(properties.get("pricingTier")).lower()),
        None,
    )
    if tier is None:
        message = (
            f"pricingTier '{properties.get('pricingTier')}' is invalid; allowed values are "
            f"{', '.join(PRICING_TIERS)}."
        )
        raise _invalid("InvalidPricingTier", message)
    sub_plan = properties.get("subPlan")
    if tier == "Free":
        sub_plan = None
    elif name == "VirtualMachines":
        sub_plan = sub_plan or "P2"
        if sub_plan not in VM_SUB_PLANS:
            message = (
                f"subPlan '{sub_plan}' is invalid for VirtualMachines; allowed values are "
                f"{', '.join(VM_SUB_PLANS)}."
            )
            raise _invalid("InvalidSubPlan", message)
    record: dict[str, Any] = {
        "id": pricing_id(store, name),
        "name": name,
        "type": PRICING_TYPE,
        "pricingTier": tier,
        "enablementTime": properties.get("enablementTime") or format_time(_now()),
        "extensions": copy.deepcopy(list(properties.get("extensions") or [])),
    }
    if sub_plan:
        record["subPlan"] = sub_plan
    return record


# ---------------------------------------------------------------------------------- faults

ACTIONS = {
    "read": ("GET", "Microsoft.Security/locations/jitNetworkAccessPolicies/read"),
    "write": ("PUT", "Microsoft.Security/locations/jitNetworkAccessPolicies/write"),
    "delete": ("DELETE", "Microsoft.Security/locations/jitNetworkAccessPolicies/delete"),
    "initiate": ("POST", "Microsoft.Security/locations/jitNetworkAccessPolicies/initiate/action"),
}
SANDBOX_CLIENT_OBJECT_ID = "00000000-0000-4000-8000-00000000b07a"


def fault(
    status: int,
    code: str | None = None,
    *,
    operation: str = "initiate",
    scope: str | None = None,
    client: str = "jitbot-sandbox-app",
    times: int | None = 1,
) -> dict[str, Any]:
    """A fault spec for ``ArmServer.add_fault`` that makes a JIT call fail as ARM would.

    ``operation`` is read, write, delete or initiate; ``scope`` (a policy's resource id, say)
    limits the fault to paths that contain it and is named in the message; without it every
    JIT call of that operation is hit. 403 ``AuthorizationFailed`` and
    ``RequestDisallowedByPolicy`` get ARM's wording; 429 gets ``SubscriptionRequestsThrottled``
    with ``Retry-After``; other statuses keep the fault machinery's defaults.
    """
    method, action = ACTIONS[operation]
    base = scope.rstrip("/") if scope else "/jitNetworkAccessPolicies"
    path = f"{scope.rstrip('/') if scope else ''}/initiate" if operation == "initiate" else base
    shown = f"scope '{scope}'" if scope else "the JIT policy's scope"
    spec: dict[str, Any] = {"method": method, "path_contains": path, "status": status}
    if times is not None:
        spec["times"] = times
    if status == 403 and code in (None, "AuthorizationFailed"):
        spec["code"] = "AuthorizationFailed"
        spec["message"] = (
            f"The client '{client}' with object id '{SANDBOX_CLIENT_OBJECT_ID}' does not have "
            f"authorization to perform action '{action}' over {shown} or the scope is "
            "invalid. If access was recently granted, please refresh your credentials."
        )
    elif code == "RequestDisallowedByPolicy":
        spec["code"] = code
        spec["message"] = (
            "Resource 'jitNetworkAccessPolicies' was disallowed by policy. Policy identifiers: "
            '\'[{"policyAssignment":{"name":"Deny JIT changes","id":"/providers/'
            'Microsoft.Authorization/policyAssignments/deny-jit"},"policyDefinition":'
            '{"name":"Deny JIT changes","id":"/providers/Microsoft.Authorization/'
            "policyDefinitions/deny-jit\"}}]'."
        )
    elif status == 429:
        spec["code"] = code or "SubscriptionRequestsThrottled"
        spec["retry_after"] = 1
    elif code is not None:
        spec["code"] = code
    return spec


# ---------------------------------------------------------------------------------- seed


def load_root_seed(store: Store, seed: Mapping[str, Any]) -> None:
    """Read ``defender`` (pricings, requestor, apply delay) and each resource group's
    ``jitNetworkAccessPolicies`` (see ``sandbox/seeds/README.md``)."""
    defender = seed.get("defender") or {}
    config = settings(store)
    if "requestor" in defender:
        config["requestor"] = str(defender["requestor"])
    if "applyDelaySeconds" in defender:
        set_apply_delay(store, float(defender["applyDelaySeconds"]))
    for name, properties in (defender.get("pricings") or {}).items():
        canonical = next((plan for plan in PLAN_NAMES if plan.lower() == name.lower()), None)
        if canonical is None:
            raise ValueError(f"seed pricing {name!r} is not a Defender plan ({PLAN_NAMES})")
        try:
            store.put(_pricing_record(store, canonical, properties))
        except ArmError as exc:
            raise ValueError(f"seed pricing {name}: {exc.code}: {exc.message}") from exc
    for group_seed in seed.get("resourceGroups", []):
        group = store.group(group_seed["name"])
        assert group is not None
        for item in group_seed.get("jitNetworkAccessPolicies", []):
            _seed_policy(store, group.name, group.location, item)


def _seed_policy(store: Store, group_name: str, default_location: str, item: Any) -> None:
    group = store.group(group_name)
    assert group is not None
    name = item["name"]
    location = item.get("location", default_location)
    policy_id = store.resource_id(
        group, NAMESPACE, "locations", location, "jitNetworkAccessPolicies", name
    )
    try:
        virtual_machines = validate_virtual_machines(
            store, item.get("virtualMachines"), group.name, location, name, policy_id
        )
        policy = {
            "id": policy_id,
            "name": name,
            "type": POLICY_TYPE,
            "location": location,
            "kind": item.get("kind", "Basic"),
            "virtualMachines": virtual_machines,
            "requests": [],
            "_denyRules": {},
        }
        sync_deny_rules(store, policy)
    except ArmError as exc:
        raise ValueError(f"seed JIT policy {name}: {exc.code}: {exc.message}") from exc
    store.put(policy)


# ---------------------------------------------------------------------------------- routes


def _routes() -> tuple[Route, ...]:
    sub = "/subscriptions/{subscriptionId}/providers/Microsoft.Security"
    group = "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers"
    group += "/Microsoft.Security"
    policies = "jitNetworkAccessPolicies"
    one = f"{group}/locations/{{ascLocation}}/{policies}/{{jitNetworkAccessPolicyName}}"
    kind = "locations/jitNetworkAccessPolicies"
    jit = [
        ("GET", f"{sub}/{policies}", list_policies),
        ("GET", f"{sub}/locations/{{ascLocation}}/{policies}", list_policies),
        ("GET", f"{group}/{policies}", list_policies),
        ("GET", f"{group}/locations/{{ascLocation}}/{policies}", list_policies),
        ("GET", one, get_policy),
        ("PUT", one, put_policy),
        ("DELETE", one, delete_policy),
        ("POST", f"{one}/initiate", initiate),
    ]
    routes = [Route(method, path, handler, JIT_API_VERSIONS, kind) for method, path, handler in jit]
    pricing_routes = [
        ("GET", f"{sub}/pricings", list_pricings),
        ("GET", f"{sub}/pricings/{{pricingName}}", get_pricing),
        ("PUT", f"{sub}/pricings/{{pricingName}}", put_pricing),
    ]
    routes += [
        Route(method, path, handler, PRICING_API_VERSIONS, "pricings")
        for method, path, handler in pricing_routes
    ]
    return tuple(routes)


PROVIDER = Provider(
    namespace=NAMESPACE,
    routes=_routes(),
    load_root_seed=load_root_seed,
    api_versions=JIT_API_VERSIONS,
    tick=tick,
)
