"""Validation of NSG security rules, with the error codes Azure answers.

The rules follow ``SecurityRulePropertiesFormat`` of the Microsoft.Network 2025-05-01 spec and
the service's documented limits: priorities 100-4096 unique per direction, names of 1-80 word
characters, descriptions of at most 140 characters, ports 0-65535 or ``a-b`` ranges, canonical
CIDRs (an address with host bits set, such as ``10.0.0.5/24``, is rejected), ``*`` and service
tags only in the singular address properties, at most 1000 rules per NSG.

Codes confirmed from public reports of the live service: ``SecurityRuleInvalidPriority``,
``SecurityRuleConflict``, ``SecurityRuleInvalidPortRange``, ``SecurityRuleInvalidAddressPrefix``,
``SecurityRuleInvalidProtocol``, ``SecurityRuleParametersMissing``,
``SecurityRuleParameterContainsUnsupportedValue``, ``SecurityRuleCountLimitReached``,
``InvalidResourceName``, ``InvalidRequestFormat``. Not confirmed, chosen in the same family:
``SecurityRuleInvalidAccess``, ``SecurityRuleInvalidDirection``,
``SecurityRuleInvalidDescription`` and ``SecurityRuleInvalidParameters`` (both the singular and
the plural form of a property given).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from typing import Any

from sandbox.arm.errors import ArmError, bad_request, invalid_request_format

PRIORITY_MIN = 100
PRIORITY_MAX = 4096
MAX_RULES = 1000
DESCRIPTION_MAX = 140
NAME_MAX = 80

PROTOCOLS = ("Tcp", "Udp", "Icmp", "Esp", "Ah", "*")
ACCESSES = ("Allow", "Deny")
DIRECTIONS = ("Inbound", "Outbound")

# A representative subset of Azure service tags; a tag may carry a region (Storage.WestEurope).
SERVICE_TAGS = frozenset(
    tag.lower()
    for tag in (
        "VirtualNetwork",
        "AzureLoadBalancer",
        "Internet",
        "AzureCloud",
        "Storage",
        "Sql",
        "SqlManagement",
        "AzureCosmosDB",
        "AzureKeyVault",
        "EventHub",
        "ServiceBus",
        "AzureContainerRegistry",
        "MicrosoftContainerRegistry",
        "AppService",
        "AppServiceManagement",
        "ApiManagement",
        "AzureActiveDirectory",
        "AzureMonitor",
        "AzureBackup",
        "AzureSiteRecovery",
        "AzureTrafficManager",
        "AzureResourceManager",
        "AzureFrontDoor.Backend",
        "AzureFrontDoor.Frontend",
        "AzureFrontDoor.FirstParty",
        "GatewayManager",
        "GuestAndHybridManagement",
        "AzurePlatformDNS",
        "AzurePlatformIMDS",
        "AzurePlatformLKM",
        "AzureUpdateDelivery",
        "AzureArcInfrastructure",
        "WindowsVirtualDesktop",
        "BatchNodeManagement",
        "DataFactory",
        "HDInsight",
        "LogicApps",
        "PowerBI",
    )
)

_NAME_RE = re.compile(r"\w(?:[\w.-]{0,%d}\w)?" % (NAME_MAX - 2))
_PORT_RE = re.compile(r"([0-9]+)(?:-([0-9]+))?")
_REGION_RE = re.compile(r"[A-Za-z0-9]+")

PropertyPair = tuple[str, str]
SOURCE_PORTS: PropertyPair = ("sourcePortRange", "sourcePortRanges")
DESTINATION_PORTS: PropertyPair = ("destinationPortRange", "destinationPortRanges")
SOURCE_ADDRESSES: PropertyPair = ("sourceAddressPrefix", "sourceAddressPrefixes")
DESTINATION_ADDRESSES: PropertyPair = ("destinationAddressPrefix", "destinationAddressPrefixes")


def validate_name(name: str) -> None:
    """400 InvalidResourceName unless ``name`` follows Azure's rule for NSGs and rules."""
    if isinstance(name, str) and len(name) <= NAME_MAX and _NAME_RE.fullmatch(name):
        return
    message = (
        f"Resource name {name} is invalid. The name can be up to {NAME_MAX} characters long. "
        "It must begin with a word character, and it must end with a word character or with "
        "'_'. The name may contain word characters or '.', '-', '_'."
    )
    raise bad_request("InvalidResourceName", message)


def validate_rule(rule_id: str, properties: Any) -> dict[str, Any]:
    """The rule's properties, checked and normalised (enum casing, empty values dropped)."""
    if properties is None:
        properties = {}
    if not isinstance(properties, Mapping):
        raise invalid_request_format()
    props = {key: value for key, value in properties.items() if value not in (None, "", [])}

    result: dict[str, Any] = {}
    description = _description(props.get("description"))
    if description is not None:
        result["description"] = description
    result["protocol"] = _protocol(props.get("protocol"))
    priority = _priority(props.get("priority"))
    access = _enum(props.get("access"), ACCESSES, "Access")
    direction = _enum(props.get("direction"), DIRECTIONS, "Direction")
    result.update(_ports(rule_id, props, SOURCE_PORTS, "Source"))
    result.update(_ports(rule_id, props, DESTINATION_PORTS, "Destination"))
    result.update(_addresses(rule_id, props, SOURCE_ADDRESSES, "Source"))
    result.update(_addresses(rule_id, props, DESTINATION_ADDRESSES, "Destination"))
    result.update({"access": access, "priority": priority, "direction": direction})
    return result


def priority_conflict(
    rules: Iterable[tuple[str, Mapping[str, Any]]], name: str, properties: Mapping[str, Any]
) -> str | None:
    """The name of another rule with the same priority and direction, if any."""
    for other_name, other in rules:
        if other_name.lower() == name.lower():
            continue
        same_direction = str(other["direction"]).lower() == str(properties["direction"]).lower()
        if same_direction and other["priority"] == properties["priority"]:
            return other_name
    return None


def conflict_error(existing: str, new: str) -> ArmError:
    message = (
        f"Security rule {existing} conflicts with rule {new}. Rules cannot have the same "
        "Priority and Direction. To learn more, see aka.ms/nsgrules."
    )
    return bad_request("SecurityRuleConflict", message)


def count_limit_error() -> ArmError:
    message = f"A security group cannot have more than {MAX_RULES} security rules."
    return bad_request("SecurityRuleCountLimitReached", message)


def _description(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise invalid_request_format()
    if len(value) > DESCRIPTION_MAX:
        message = (
            f"Security rule description is {len(value)} characters long; it is restricted to "
            f"{DESCRIPTION_MAX} characters."
        )
        raise bad_request("SecurityRuleInvalidDescription", message)
    return value


def _protocol(value: Any) -> str:
    for protocol in PROTOCOLS:
        if isinstance(value, str) and value.lower() == protocol.lower():
            return protocol
    message = (
        f"Security rule has invalid Protocol. Value provided: {_shown(value)} "
        f"Allowed values: Icmp,Tcp,Udp,Esp,Ah,*."
    )
    raise bad_request("SecurityRuleInvalidProtocol", message)


def _priority(value: Any) -> int:
    if value is None:
        value = 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid_request_format()
    if not PRIORITY_MIN <= value <= PRIORITY_MAX:
        message = (
            f"Security rule has invalid Priority. Value provided: {value} "
            f"Allowed range {PRIORITY_MIN}-{PRIORITY_MAX}."
        )
        raise bad_request("SecurityRuleInvalidPriority", message)
    return value


def _enum(value: Any, allowed: tuple[str, ...], label: str) -> str:
    for option in allowed:
        if isinstance(value, str) and value.lower() == option.lower():
            return option
    message = (
        f"Security rule has invalid {label}. Value provided: {_shown(value)} "
        f"Allowed values: {','.join(allowed)}."
    )
    raise bad_request(f"SecurityRuleInvalid{label}", message)


def _ports(rule_id: str, props: Mapping[str, Any], pair: PropertyPair, side: str) -> dict[str, Any]:
    single, plural = pair
    value = _single_or_plural(rule_id, props, pair)
    if value is None:
        message = (
            f"Required security rule parameters are missing for security rule with Id: "
            f"{rule_id}. Security rule must specify {side}PortRanges or {side}PortRange."
        )
        raise bad_request("SecurityRuleParametersMissing", message)
    if isinstance(value, list):
        return {plural: [_port_range(item) for item in value]}
    return {single: _port_range(value)}


def _port_range(value: Any) -> str:
    if value == "*":
        return value
    match = _PORT_RE.fullmatch(value) if isinstance(value, str) else None
    if match:
        low = int(match.group(1))
        high = int(match.group(2) or low)
        if low <= high <= 65535:
            return value
    message = (
        f"Security rule has invalid Port range. Value provided: {_shown(value)}. Value should be "
        "an integer OR integer range with '-' delimiter. Valid range 0-65535."
    )
    raise bad_request("SecurityRuleInvalidPortRange", message)


def _addresses(
    rule_id: str, props: Mapping[str, Any], pair: PropertyPair, side: str
) -> dict[str, Any]:
    single, plural = pair
    groups_key = f"{side[0].lower()}{side[1:]}ApplicationSecurityGroups"
    groups = props.get(groups_key)
    value = _single_or_plural(rule_id, props, pair)
    result: dict[str, Any] = {}
    if groups is not None:
        result[groups_key] = _application_security_groups(groups)
    if value is None:
        if groups is None:
            message = (
                f"Required security rule parameters are missing for security rule with Id: "
                f"{rule_id}. Security rule must specify {side}AddressPrefixes, "
                f"{side}AddressPrefix, or {side}ApplicationSecurityGroups."
            )
            raise bad_request("SecurityRuleParametersMissing", message)
        return result
    if isinstance(value, list):
        result[plural] = [_listed_prefix(rule_id, item, f"{side}AddressPrefixes") for item in value]
    else:
        result[single] = _prefix(rule_id, value)
    return result


def _single_or_plural(rule_id: str, props: Mapping[str, Any], pair: PropertyPair) -> Any:
    single, plural = pair
    has_single = single in props
    has_plural = plural in props
    if has_single and has_plural:
        message = (
            f"Security rule {rule_id} specifies both {single} and {plural}. "
            "Specify only one of them."
        )
        raise bad_request("SecurityRuleInvalidParameters", message)
    if has_plural:
        if not isinstance(props[plural], list):
            raise invalid_request_format()
        return list(props[plural])
    return props.get(single)


def _prefix(rule_id: str, value: Any) -> str:
    if value == "*" or _is_service_tag(value) or _is_network(value):
        return value
    raise _invalid_prefix(rule_id, value)


def _listed_prefix(rule_id: str, value: Any, parameter: str) -> str:
    if value == "*" or _is_service_tag(value):
        message = (
            f"Security rule parameter {parameter} for rule with Id {rule_id} cannot specify "
            "existing VIRTUALNETWORK, INTERNET, AZURELOADBALANCER, '*' or system tags. "
            f"Unsupported value used: {value}."
        )
        raise bad_request("SecurityRuleParameterContainsUnsupportedValue", message)
    if _is_network(value):
        return value
    raise _invalid_prefix(rule_id, value)


def _invalid_prefix(rule_id: str, value: Any) -> ArmError:
    message = f"Security rule {rule_id} has invalid Address prefix. Value provided: {_shown(value)}"
    return bad_request("SecurityRuleInvalidAddressPrefix", message)


def _is_service_tag(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    tag = value.lower()
    if tag in SERVICE_TAGS:
        return True
    base, _, region = tag.rpartition(".")
    return base in SERVICE_TAGS and bool(_REGION_RE.fullmatch(region))


def _is_network(value: Any) -> bool:
    """An IPv4/IPv6 address or a CIDR whose host bits are zero."""
    if not isinstance(value, str) or value.strip() != value:
        return False
    try:
        ipaddress.ip_network(value, strict=True)
    except ValueError:
        return False
    return True


def _application_security_groups(value: Any) -> list[dict[str, str]]:
    valid = isinstance(value, list) and all(
        isinstance(item, Mapping) and isinstance(item.get("id"), str) for item in value
    )
    if not valid:
        raise invalid_request_format()
    return [{"id": item["id"]} for item in value]


def _shown(value: Any) -> str:
    return "" if value is None else str(value)
