"""Microsoft.Network/azureFirewalls: Azure Firewall with classic rule collections.

Response shapes follow ``AzureFirewalls_Get.json`` and ``AzureFirewalls_CreateOrUpdate.json``
(2025-05-01) and ``azureFirewall.2025-05-01.json``: ``ipConfigurations`` with the allocated
``privateIPAddress`` and a ``publicIPAddress`` reference, the three classic collection lists
(``applicationRuleCollections``, ``natRuleCollections``, ``networkRuleCollections``) and a
``firewallPolicy`` reference for a firewall managed by Azure Firewall Manager. Child resources
(IP configurations, rule collections) carry the firewall's ETag and provisioning state, as
Microsoft.Network children do.

A PUT replaces the whole firewall and runs as a long-running operation, exactly like an NSG PUT
in :mod:`sandbox.arm.network`: 201/200 with ``Azure-AsyncOperation``, ``provisioningState``
``Updating`` until the operation succeeds, 409 ``AnotherOperationInProgress`` for a write while
it runs, and a failed operation puts the previous firewall back. The ETag changes on every
write (the restore after a failed operation included), and ``If-Match`` / ``If-None-Match`` are
checked (412 ``PreconditionFailed``). Read-only properties in a PUT body are ignored.

Validation of classic rule collections (what a DNAT write can get wrong):

- collection names unique in the firewall, priorities 100-65000 and unique per collection type
  (the examples give a NAT and a network collection the same priority), NAT actions ``Dnat`` /
  ``Snat``, network and application actions ``Allow`` / ``Deny``;
- NAT rules: a name unique in the collection, protocols ``TCP`` / ``UDP`` only, source
  addresses (or source IP groups), destination addresses that are public IPs of this firewall
  (for ``Dnat``), exactly one destination port and one translated port (no ``*``, ranges or
  lists), and either a translated IP address or a translated FQDN;
- classic collections and a ``firewallPolicy`` cannot coexist.

Codes confirmed from public reports of the live service:
``AzureFirewallRuleInvalidDnatPortOrRangeFormat`` (translated port), ``InvalidResourceReference``
(a missing subnet or public IP), ``InvalidResourceName``, ``InvalidRequestFormat``; the
wording "AzureFirewallRule <name>: Invalid IP address value or range <value>." is confirmed
but not its code. ``AzureFirewallPolicyAndRuleCollectionsConflict`` was seen only in a
third-party deployment script, not in Microsoft material. Not confirmed, chosen in the same family:
``AzureFirewallRuleInvalidIpAddressOrRangeFormat``, ``AzureFirewallRuleInvalidProtocol``,
``AzureFirewallRuleParametersMissing``, ``AzureFirewallNatRuleInvalidDestinationAddress``,
``AzureFirewallRuleDuplicateName``, ``AzureFirewallRuleCollectionInvalidPriority``,
``AzureFirewallRuleCollectionDuplicatePriority``, ``AzureFirewallRuleCollectionInvalidAction``,
``AzureFirewallRuleCollectionDuplicateName``, and the DNAT port code applied to destination
ports.
"""

from __future__ import annotations

import copy
import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from sandbox.arm import network
from sandbox.arm import network_rules as names
from sandbox.arm.errors import ArmError, bad_request, invalid_request_format, resource_not_found
from sandbox.arm.provider import Provider, Request, Response, Route, check_preconditions
from sandbox.arm.state import ResourceGroup, Store, new_etag, resolve_ref

NAMESPACE = "Microsoft.Network"
API_VERSIONS = network.API_VERSIONS

FIREWALL_TYPE = "Microsoft.Network/azureFirewalls"
POLICY_SEGMENT = "firewallPolicies"

SUCCEEDED = "Succeeded"
UPDATING = "Updating"

APPLICATION = "applicationRuleCollections"
NAT = "natRuleCollections"
NETWORK = "networkRuleCollections"
COLLECTION_KINDS = (APPLICATION, NAT, NETWORK)

PRIORITY_MIN = 100
PRIORITY_MAX = 65000
NAT_ACTIONS = ("Dnat", "Snat")
FILTER_ACTIONS = ("Allow", "Deny")
NAT_PROTOCOLS = ("TCP", "UDP")

DEFAULT_SKU = {"name": "AZFW_VNet", "tier": "Standard"}
DEFAULT_THREAT_INTEL_MODE = "Alert"

# Writable properties kept as given; everything else in ``properties`` is modelled below.
PASSTHROUGH = (
    "sku",
    "threatIntelMode",
    "firewallPolicy",
    "virtualHub",
    "hubIPAddresses",
    "managementIpConfiguration",
    "additionalProperties",
    "autoscaleConfiguration",
)
NAT_RULE_KEYS = (
    "name",
    "description",
    "sourceAddresses",
    "sourceIpGroups",
    "destinationAddresses",
    "destinationPorts",
    "protocols",
    "translatedAddress",
    "translatedFqdn",
    "translatedPort",
)
# Azure keeps the first four addresses of every subnet for itself.
RESERVED_HOSTS = 4

_PORT_RE = re.compile(r"[0-9]{1,5}")


# ---------------------------------------------------------------------------------- rendering


def render_firewall(record: Mapping[str, Any]) -> dict[str, Any]:
    settings = record["settings"]
    properties: dict[str, Any] = {
        "provisioningState": record["provisioningState"],
        "sku": copy.deepcopy(settings.get("sku", DEFAULT_SKU)),
        "threatIntelMode": settings.get("threatIntelMode", DEFAULT_THREAT_INTEL_MODE),
    }
    for key in ("firewallPolicy", "virtualHub", "hubIPAddresses", "managementIpConfiguration"):
        if key in settings:
            properties[key] = copy.deepcopy(settings[key])
    properties["ipConfigurations"] = [
        _render_ip_configuration(record, config) for config in record["ipConfigurations"]
    ]
    for kind in COLLECTION_KINDS:
        properties[kind] = [_render_collection(record, kind, item) for item in record[kind]]
    properties["ipGroups"] = []
    properties["additionalProperties"] = copy.deepcopy(settings.get("additionalProperties", {}))
    if "autoscaleConfiguration" in settings:
        properties["autoscaleConfiguration"] = copy.deepcopy(settings["autoscaleConfiguration"])

    envelope: dict[str, Any] = {
        "name": record["name"],
        "id": record["id"],
        "type": record["type"],
        "etag": record["etag"],
        "location": record["location"],
        "zones": list(record["zones"]),
    }
    if record.get("tags"):
        envelope["tags"] = dict(record["tags"])
    return {**envelope, "properties": properties}


def _render_ip_configuration(
    record: Mapping[str, Any], config: Mapping[str, Any]
) -> dict[str, Any]:
    properties: dict[str, Any] = {"provisioningState": record["provisioningState"]}
    if config["privateIPAddress"]:
        properties["privateIPAddress"] = config["privateIPAddress"]
    if config["subnetId"]:
        properties["subnet"] = {"id": config["subnetId"]}
    if config["publicIPAddressId"]:
        properties["publicIPAddress"] = {"id": config["publicIPAddressId"]}
    return {
        "name": config["name"],
        "id": f"{record['id']}/ipConfigurations/{config['name']}",
        "etag": record["etag"],
        "properties": properties,
    }


def _render_collection(
    record: Mapping[str, Any], kind: str, collection: Mapping[str, Any]
) -> dict[str, Any]:
    return {
        "name": collection["name"],
        "id": f"{record['id']}/{kind}/{collection['name']}",
        "etag": record["etag"],
        "properties": {
            "priority": collection["priority"],
            "action": {"type": collection["action"]},
            "rules": copy.deepcopy(collection["rules"]),
            "provisioningState": record["provisioningState"],
        },
    }


# ---------------------------------------------------------------------------------- lookups


def _firewall_id(request: Request) -> str:
    name = request.params["azureFirewallName"]
    return request.store.resource_id(request.group, NAMESPACE, "azureFirewalls", name)


def public_addresses(store: Store, record: Mapping[str, Any]) -> list[str]:
    """The public IP addresses of a firewall's IP configurations."""
    addresses = []
    for config in record["ipConfigurations"]:
        pip = store.get(config["publicIPAddressId"]) if config["publicIPAddressId"] else None
        if pip is not None:
            addresses.append(pip["ipAddress"])
    return addresses


# ---------------------------------------------------------------------------------- handlers


def get_firewall(request: Request) -> Response:
    record = request.store.get(_firewall_id(request))
    if record is None:
        name = request.params["azureFirewallName"]
        raise resource_not_found(FIREWALL_TYPE, name, request.group.name)
    return Response(200, render_firewall(record))


def list_firewalls(request: Request) -> Response:
    group = request.params.get("resourceGroupName")
    records = request.store.of_type(FIREWALL_TYPE, group)
    return Response(200, {"value": [render_firewall(record) for record in records]})


def put_firewall(request: Request) -> Response:
    name = request.params["azureFirewallName"]
    names.validate_name(name)
    store = request.store
    existing = store.get(_firewall_id(request))
    firewall_id = existing["id"] if existing else _firewall_id(request)
    if existing:
        request.ensure_idle(firewall_id)
    check_preconditions(request, existing["etag"] if existing else None, firewall_id)

    record = firewall_from_body(store, request.json_body(), existing, firewall_id, name)
    previous = copy.deepcopy(existing)
    store.put(record)
    headers = request.begin_operation(
        firewall_id,
        record["location"],
        _settle(record),
        _restore(store, firewall_id, previous),
    )
    return Response(200 if existing else 201, render_firewall(record), headers)


def _settle(record: dict[str, Any]) -> Callable[[], None]:
    def settle() -> None:
        record["provisioningState"] = SUCCEEDED

    return settle


def _restore(store: Store, firewall_id: str, previous: dict[str, Any] | None) -> Callable[[], None]:
    """Put the firewall back as it was before a failed write, under a new ETag."""

    def restore() -> None:
        if previous is None:
            store.delete(firewall_id)
            return
        restored = copy.deepcopy(previous)
        restored["etag"] = new_etag()
        store.put(restored)

    return restore


# ---------------------------------------------------------------------------------- PUT body


def firewall_from_body(
    store: Store,
    body: Mapping[str, Any],
    existing: Mapping[str, Any] | None,
    firewall_id: str,
    name: str,
) -> dict[str, Any]:
    """The record a PUT of ``body`` leaves behind (``Updating``), or the ArmError Azure gives."""
    location = body.get("location") or (existing["location"] if existing else None)
    if not location:
        raise bad_request(
            "LocationRequired", "The location property is required for this definition."
        )
    properties = body.get("properties") or {}
    tags = body.get("tags") if "tags" in body else (existing or {}).get("tags")
    zones = body.get("zones") if "zones" in body else (existing or {}).get("zones")
    if not isinstance(properties, Mapping) or not isinstance(tags or {}, Mapping):
        raise invalid_request_format()
    if not isinstance(zones or [], list):
        raise invalid_request_format()

    record: dict[str, Any] = {
        "id": firewall_id,
        "name": existing["name"] if existing else name,
        "type": FIREWALL_TYPE,
        "location": location,
        "tags": dict(tags or {}),
        "zones": list(zones or []),
        "etag": new_etag(),
        "provisioningState": UPDATING,
        "settings": _settings(properties),
    }
    _check_policy_exclusive(firewall_id, record["settings"], properties)
    record["ipConfigurations"] = _ip_configurations(
        store, firewall_id, properties.get("ipConfigurations"), existing
    )
    addresses = public_addresses(store, record)
    for kind in COLLECTION_KINDS:
        record[kind] = _collections(kind, properties.get(kind), addresses)
    _check_collection_names(record)
    return record


def _settings(properties: Mapping[str, Any]) -> dict[str, Any]:
    settings = {
        key: copy.deepcopy(properties[key])
        for key in PASSTHROUGH
        if properties.get(key) is not None
    }
    for key in ("firewallPolicy", "virtualHub"):
        reference = settings.get(key)
        if reference is not None and not (
            isinstance(reference, Mapping) and isinstance(reference.get("id"), str)
        ):
            raise invalid_request_format()
    return settings


def _check_policy_exclusive(
    firewall_id: str, settings: Mapping[str, Any], properties: Mapping[str, Any]
) -> None:
    """A firewall managed by a firewall policy holds no classic rule collections."""
    if "firewallPolicy" not in settings:
        return
    given = [kind for kind in COLLECTION_KINDS if properties.get(kind)]
    if not given:
        return
    message = (
        f"Azure Firewall {firewall_id} references firewall policy "
        f"{settings['firewallPolicy']['id']} and also has {', '.join(given)}. Firewall Policy "
        "and classic rule collections cannot coexist: manage the rules in the firewall policy, "
        "or remove the policy to use classic rules."
    )
    raise bad_request("AzureFirewallPolicyAndRuleCollectionsConflict", message)


def _ip_configurations(
    store: Store, firewall_id: str, items: Any, existing: Mapping[str, Any] | None
) -> list[dict[str, Any]]:
    items = [] if items is None else items
    if not isinstance(items, list) or not all(isinstance(item, Mapping) for item in items):
        raise invalid_request_format()
    configs = (existing or {}).get("ipConfigurations", [])
    old = {config["name"].lower(): config for config in configs}
    result: list[dict[str, Any]] = []
    for item in items:
        name = item.get("name")
        names.validate_name(name)
        properties = item.get("properties") or {}
        if not isinstance(properties, Mapping):
            raise invalid_request_format()
        subnet_id = _reference(store, firewall_id, properties.get("subnet"), network.SUBNET_TYPE)
        pip_id = _reference(store, firewall_id, properties.get("publicIPAddress"), network.PIP_TYPE)
        previous = old.get(name.lower())
        if previous is not None and _same(previous["subnetId"], subnet_id):
            private_ip = previous["privateIPAddress"]
        else:
            private_ip = _allocate(store, firewall_id, subnet_id, result)
        result.append(
            {
                "name": previous["name"] if previous else name,
                "privateIPAddress": private_ip,
                "subnetId": subnet_id,
                "publicIPAddressId": pip_id,
            }
        )
    return result


def _reference(store: Store, firewall_id: str, value: Any, resource_type: str) -> str | None:
    """The stored id a ``{"id": ...}`` reference names; 400 InvalidResourceReference if none."""
    if value is None:
        return None
    if not isinstance(value, Mapping) or not isinstance(value.get("id"), str):
        raise invalid_request_format()
    record = store.get(value["id"])
    if record is None or record["type"].lower() != resource_type.lower():
        message = (
            f"Resource {value['id']} referenced by resource {firewall_id} was not found. Please "
            "make sure that the referenced resource exists, and that both resources are in the "
            "same region."
        )
        raise bad_request("InvalidResourceReference", message)
    return str(record["id"])


def _allocate(
    store: Store, firewall_id: str, subnet_id: str | None, pending: Iterable[Mapping[str, Any]]
) -> str | None:
    """The first free address of the subnet after the ones Azure reserves."""
    if subnet_id is None:
        return None
    subnet = store.get(subnet_id)
    assert subnet is not None
    taken = {config["privateIPAddress"] for config in pending}
    for other in store.of_type(FIREWALL_TYPE):
        if not _same(other["id"], firewall_id):
            taken.update(config["privateIPAddress"] for config in other["ipConfigurations"])
    for nic in store.of_type(network.NIC_TYPE):
        taken.update(config["privateIPAddress"] for config in nic["ipConfigurations"])
    hosts = ipaddress.ip_network(subnet["addressPrefix"], strict=False).hosts()
    for index, host in enumerate(hosts, start=1):
        if index >= RESERVED_HOSTS and str(host) not in taken:
            return str(host)
    message = f"Subnet {subnet_id} has no free IP address for Azure Firewall {firewall_id}."
    raise bad_request("SubnetIsFull", message)


def _same(left: str | None, right: str | None) -> bool:
    return (left or "").lower() == (right or "").lower()


# ---------------------------------------------------------------------------------- collections


def _collections(kind: str, items: Any, addresses: list[str]) -> list[dict[str, Any]]:
    items = [] if items is None else items
    if not isinstance(items, list) or not all(isinstance(item, Mapping) for item in items):
        raise invalid_request_format()
    result: list[dict[str, Any]] = []
    for item in items:
        name = item.get("name")
        names.validate_name(name)
        properties = item.get("properties") or {}
        if not isinstance(properties, Mapping):
            raise invalid_request_format()
        priority = _priority(name, properties.get("priority"))
        clash = next((other for other in result if other["priority"] == priority), None)
        if clash is not None:
            message = (
                f"AzureFirewallRuleCollection {name}: priority {priority} is already used by "
                f"rule collection {clash['name']}. Rule collections of one type need distinct "
                "priorities."
            )
            raise bad_request("AzureFirewallRuleCollectionDuplicatePriority", message)
        allowed = NAT_ACTIONS if kind == NAT else FILTER_ACTIONS
        action = _action(name, properties.get("action"), allowed)
        if kind == NAT:
            rules = _nat_rules(name, properties.get("rules"), action, addresses)
        else:
            rules = _opaque_rules(name, properties.get("rules"))
        result.append({"name": name, "priority": priority, "action": action, "rules": rules})
    return result


def _check_collection_names(record: Mapping[str, Any]) -> None:
    seen: dict[str, str] = {}
    for kind in COLLECTION_KINDS:
        for collection in record[kind]:
            key = collection["name"].lower()
            if key in seen:
                message = (
                    f"Azure Firewall {record['id']} has two rule collections named "
                    f"{collection['name']} ({seen[key]} and {kind}); names must be unique in "
                    "the firewall."
                )
                raise bad_request("AzureFirewallRuleCollectionDuplicateName", message)
            seen[key] = kind


def _priority(collection: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, type(None))):
        raise invalid_request_format()
    if value is None or not PRIORITY_MIN <= value <= PRIORITY_MAX:
        message = (
            f"AzureFirewallRuleCollection {collection} has invalid Priority. Value provided: "
            f"{'' if value is None else value} Allowed range {PRIORITY_MIN}-{PRIORITY_MAX}."
        )
        raise bad_request("AzureFirewallRuleCollectionInvalidPriority", message)
    return value


def _action(collection: str, value: Any, allowed: tuple[str, ...]) -> str:
    kind = value.get("type") if isinstance(value, Mapping) else None
    for option in allowed:
        if isinstance(kind, str) and kind.lower() == option.lower():
            return option
    message = (
        f"AzureFirewallRuleCollection {collection} has invalid action type. Value provided: "
        f"{'' if kind is None else kind} Allowed values: {','.join(allowed)}."
    )
    raise bad_request("AzureFirewallRuleCollectionInvalidAction", message)


def _rule_items(collection: str, items: Any) -> list[Mapping[str, Any]]:
    items = [] if items is None else items
    if not isinstance(items, list) or not all(isinstance(item, Mapping) for item in items):
        raise invalid_request_format()
    seen: set[str] = set()
    for item in items:
        name = item.get("name")
        names.validate_name(name)
        if name.lower() in seen:
            message = f"AzureFirewallRuleCollection {collection} has two rules named {name}."
            raise bad_request("AzureFirewallRuleDuplicateName", message)
        seen.add(name.lower())
    return items


def _opaque_rules(collection: str, items: Any) -> list[dict[str, Any]]:
    """Network and application rules are kept as given (jitbot never writes them)."""
    return [
        {key: copy.deepcopy(value) for key, value in item.items() if value is not None}
        for item in _rule_items(collection, items)
    ]


def _nat_rules(
    collection: str, items: Any, action: str, addresses: list[str]
) -> list[dict[str, Any]]:
    return [_nat_rule(item, action, addresses) for item in _rule_items(collection, items)]


def _nat_rule(item: Mapping[str, Any], action: str, addresses: list[str]) -> dict[str, Any]:
    props = {key: item[key] for key in NAT_RULE_KEYS if item.get(key) not in (None, "", [])}
    name = props["name"]
    for key in ("sourceAddresses", "sourceIpGroups", "destinationAddresses"):
        _string_list(props, key)
    if "description" in props and not isinstance(props["description"], str):
        raise invalid_request_format()

    props["protocols"] = _nat_protocols(name, props.get("protocols"))
    if "sourceAddresses" not in props and "sourceIpGroups" not in props:
        raise _missing(name, "sourceAddresses or sourceIpGroups")
    for value in props.get("sourceAddresses", []):
        _address(name, value, allow_any=True)
    if "destinationAddresses" not in props:
        raise _missing(name, "destinationAddresses")
    for value in props["destinationAddresses"]:
        _address(name, value, allow_any=action != "Dnat")
        if action == "Dnat" and value not in addresses:
            shown = ", ".join(addresses) or "none"
            message = (
                f"AzureFirewallRule {name}: DNAT destination address {value} is not a public IP "
                f"address of the firewall. Public IP addresses of the firewall: {shown}."
            )
            raise bad_request("AzureFirewallNatRuleInvalidDestinationAddress", message)
    props["destinationPorts"] = [_single_port(name, props.get("destinationPorts"), "destination")]
    props["translatedPort"] = _single_port(name, props.get("translatedPort"), "translated")
    _translation(name, props)
    return {key: copy.deepcopy(props[key]) for key in NAT_RULE_KEYS if key in props}


def _string_list(props: dict[str, Any], key: str) -> None:
    value = props.get(key)
    if value is not None and not (
        isinstance(value, list) and all(isinstance(item, str) for item in value)
    ):
        raise invalid_request_format()


def _nat_protocols(rule: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not value:
        raise _missing(rule, "protocols")
    result = []
    for item in value:
        match = next(
            (p for p in NAT_PROTOCOLS if isinstance(item, str) and item.upper() == p), None
        )
        if match is None:
            message = (
                f"AzureFirewallRule {rule}: invalid protocol {item} for a NAT rule. Allowed "
                f"values: {','.join(NAT_PROTOCOLS)}."
            )
            raise bad_request("AzureFirewallRuleInvalidProtocol", message)
        result.append(match)
    return result


def _address(rule: str, value: str, *, allow_any: bool) -> None:
    """An IP address, a CIDR prefix, an ``a-b`` range, or ``*`` where allowed."""
    if value == "*" and allow_any:
        return
    try:
        if "-" in value:
            low, high = (ipaddress.ip_address(part) for part in value.split("-", 1))
            if low.version == high.version and int(low) <= int(high):
                return
        else:
            ipaddress.ip_network(value, strict=False)
            return
    except ValueError:
        pass
    raise _invalid_address(rule, value)


def _invalid_address(rule: str, value: Any) -> ArmError:
    message = f"AzureFirewallRule {rule}: Invalid IP address value or range {value}."
    return bad_request("AzureFirewallRuleInvalidIpAddressOrRangeFormat", message)


def _single_port(rule: str, value: Any, which: str) -> str:
    """One port number: DNAT takes neither ``*``, ranges nor several values."""
    if which == "destination":
        if value is None:
            raise _missing(rule, "destinationPorts")
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise invalid_request_format()
        value = value[0] if len(value) == 1 else ",".join(value)
    if value is None:
        raise _missing(rule, "translatedPort")
    if isinstance(value, str) and _PORT_RE.fullmatch(value) and 1 <= int(value) <= 65535:
        return value
    message = (
        f"AzureFirewallRule {rule}: Invalid DNat port value or range. Multiple values, * and "
        f"ranges are not supported for DNAT {which} port."
    )
    raise bad_request("AzureFirewallRuleInvalidDnatPortOrRangeFormat", message)


def _translation(rule: str, props: Mapping[str, Any]) -> None:
    address = props.get("translatedAddress")
    fqdn = props.get("translatedFqdn")
    if address is None and fqdn is None:
        raise _missing(rule, "translatedAddress or translatedFqdn")
    if address is not None and fqdn is not None:
        message = (
            f"AzureFirewallRule {rule}: specify translatedAddress or translatedFqdn, not both."
        )
        raise bad_request("AzureFirewallRuleParametersMissing", message)
    if address is not None:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise _invalid_address(rule, address) from None
    if fqdn is not None and not isinstance(fqdn, str):
        raise invalid_request_format()


def _missing(rule: str, what: str) -> ArmError:
    message = f"AzureFirewallRule {rule}: required parameter {what} is missing."
    return bad_request("AzureFirewallRuleParametersMissing", message)


# ---------------------------------------------------------------------------------- seed


def load_seed(store: Store, group: ResourceGroup, seed: Mapping[str, Any]) -> None:
    """Read ``azureFirewalls`` of one resource group (see ``sandbox/seeds/README.md``)."""
    for item in seed.get("azureFirewalls", []):
        _seed_firewall(store, group, item)


def _seed_firewall(store: Store, group: ResourceGroup, item: Mapping[str, Any]) -> None:
    name = item["name"]
    firewall_id = store.resource_id(group, NAMESPACE, "azureFirewalls", name)
    configs = item.get("ipConfigurations", [])
    properties: dict[str, Any] = {
        key: copy.deepcopy(item[key]) for key in PASSTHROUGH if key in item
    }
    if "firewallPolicy" in item:
        reference = resolve_ref(store, group, item["firewallPolicy"], NAMESPACE, POLICY_SEGMENT)
        properties["firewallPolicy"] = {"id": reference}
    properties["ipConfigurations"] = [_seed_ip_configuration(store, group, c) for c in configs]
    for kind in COLLECTION_KINDS:
        if kind in item:
            properties[kind] = copy.deepcopy(item[kind])
    body = {
        "location": item.get("location", group.location),
        "tags": item.get("tags", {}),
        "zones": item.get("zones", []),
        "properties": properties,
    }
    try:
        record = firewall_from_body(store, body, None, firewall_id, name)
    except ArmError as exc:
        raise ValueError(f"seed firewall {name}: {exc.code}: {exc.message}") from exc
    for config, seeded in zip(record["ipConfigurations"], configs, strict=True):
        if "privateIPAddress" in seeded:
            config["privateIPAddress"] = _seed_private_ip(store, name, config, seeded)
    record["provisioningState"] = SUCCEEDED
    store.put(record)


def _seed_ip_configuration(
    store: Store, group: ResourceGroup, config: Mapping[str, Any]
) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    if "subnet" in config:
        subnet = resolve_ref(store, group, config["subnet"], NAMESPACE, "virtualNetworks")
        properties["subnet"] = {"id": subnet}
    if "publicIPAddress" in config:
        pip = resolve_ref(store, group, config["publicIPAddress"], NAMESPACE, "publicIPAddresses")
        properties["publicIPAddress"] = {"id": pip}
    return {"name": config.get("name", "ipconfig1"), "properties": properties}


def _seed_private_ip(
    store: Store, firewall: str, config: Mapping[str, Any], seeded: Mapping[str, Any]
) -> str:
    address = seeded["privateIPAddress"]
    subnet = store.get(config["subnetId"]) if config["subnetId"] else None
    if subnet is None or ipaddress.ip_address(address) not in ipaddress.ip_network(
        subnet["addressPrefix"], strict=False
    ):
        raise ValueError(f"seed firewall {firewall}: {address} is not in its subnet")
    return str(address)


# ---------------------------------------------------------------------------------- routes


def _routes() -> tuple[Route, ...]:
    sub = "/subscriptions/{subscriptionId}/providers/Microsoft.Network/azureFirewalls"
    group = "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers"
    group += "/Microsoft.Network/azureFirewalls"
    one = f"{group}/{{azureFirewallName}}"
    table: list[tuple[str, str, Callable[[Request], Response]]] = [
        ("GET", one, get_firewall),
        ("PUT", one, put_firewall),
        ("GET", group, list_firewalls),
        ("GET", sub, list_firewalls),
    ]
    return tuple(
        Route(method, template, handler, API_VERSIONS, "azureFirewalls")
        for method, template, handler in table
    )


PROVIDER = Provider(
    namespace=NAMESPACE,
    routes=_routes(),
    load_seed=load_seed,
    api_versions=API_VERSIONS,
    uses_operations=True,
)
