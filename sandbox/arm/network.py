"""Microsoft.Network: NICs, virtual networks and subnets, public IPs, NSGs and their rules.

Response shapes follow the 2025-05-01 examples (``NetworkSecurityGroups_Get.json``,
``SecurityRules_*.json``, ``NetworkInterfaces_Get.json``) plus the read-only properties the
spec defines and the service returns (``etag``, ``type``, ``resourceGuid``, references from an
NSG to the NICs and subnets that use it). Writes to NSGs and rules are long-running operations;
a failed operation puts the NSG back as it was before the write.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from sandbox.arm import network_rules as rules
from sandbox.arm.errors import (
    ArmError,
    bad_request,
    child_not_found,
    invalid_request_format,
    parent_resource_not_found,
    resource_not_found,
)
from sandbox.arm.provider import Provider, Request, Response, Route, check_preconditions
from sandbox.arm.state import ResourceGroup, Store, new_etag, resolve_ref, stable_guid

NAMESPACE = "Microsoft.Network"
API_VERSIONS = ("2025-05-01", "2026-03-01")

NSG_TYPE = "Microsoft.Network/networkSecurityGroups"
RULE_TYPE = f"{NSG_TYPE}/securityRules"
DEFAULT_RULE_TYPE = f"{NSG_TYPE}/defaultSecurityRules"
NIC_TYPE = "Microsoft.Network/networkInterfaces"
VNET_TYPE = "Microsoft.Network/virtualNetworks"
SUBNET_TYPE = f"{VNET_TYPE}/subnets"
PIP_TYPE = "Microsoft.Network/publicIPAddresses"

SUCCEEDED = "Succeeded"
UPDATING = "Updating"
DELETING = "Deleting"

# name, description, source, destination, access, priority, direction (NetworkSecurityGroups_Get)
DEFAULT_RULES = (
    ("AllowVnetInBound", "Allow inbound traffic from all VMs in VNET",
     "VirtualNetwork", "VirtualNetwork", "Allow", 65000, "Inbound"),
    ("AllowAzureLoadBalancerInBound", "Allow inbound traffic from azure load balancer",
     "AzureLoadBalancer", "*", "Allow", 65001, "Inbound"),
    ("DenyAllInBound", "Deny all inbound traffic", "*", "*", "Deny", 65500, "Inbound"),
    ("AllowVnetOutBound", "Allow outbound traffic from all VMs to all VMs in VNET",
     "VirtualNetwork", "VirtualNetwork", "Allow", 65000, "Outbound"),
    ("AllowInternetOutBound", "Allow outbound traffic from all VMs to Internet",
     "*", "Internet", "Allow", 65001, "Outbound"),
    ("DenyAllOutBound", "Deny all outbound traffic", "*", "*", "Deny", 65500, "Outbound"),
)  # fmt: skip


# ---------------------------------------------------------------------------------- rendering


def render_rule(rule: Mapping[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(dict(rule))


def render_nsg(store: Store, nsg: Mapping[str, Any]) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "provisioningState": nsg["provisioningState"],
        "resourceGuid": nsg["resourceGuid"],
        "securityRules": [render_rule(rule) for rule in nsg["rules"].values()],
        "defaultSecurityRules": default_rules(nsg),
    }
    nics = [{"id": nic["id"]} for nic in store.of_type(NIC_TYPE) if _same(nic["nsgId"], nsg["id"])]
    subnets = [
        {"id": subnet["id"]}
        for subnet in store.of_type(SUBNET_TYPE)
        if _same(subnet["nsgId"], nsg["id"])
    ]
    if nics:
        properties["networkInterfaces"] = nics
    if subnets:
        properties["subnets"] = subnets
    return {**_envelope(nsg), "properties": properties}


def default_rules(nsg: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The six rules Azure puts in every NSG, ids under ``.../defaultSecurityRules/``."""
    result = []
    for name, description, source, destination, access, priority, direction in DEFAULT_RULES:
        properties = {
            "provisioningState": SUCCEEDED,
            "description": description,
            "protocol": "*",
            "sourcePortRange": "*",
            "destinationPortRange": "*",
            "sourceAddressPrefix": source,
            "destinationAddressPrefix": destination,
            "access": access,
            "priority": priority,
            "direction": direction,
        }
        result.append(
            {
                "name": name,
                "id": f"{nsg['id']}/defaultSecurityRules/{name}",
                "etag": nsg["defaultEtag"],
                "type": DEFAULT_RULE_TYPE,
                "properties": properties,
            }
        )
    return result


def render_nic(nic: Mapping[str, Any]) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "provisioningState": SUCCEEDED,
        "resourceGuid": nic["resourceGuid"],
        "ipConfigurations": [
            _render_ip_configuration(nic, config) for config in nic["ipConfigurations"]
        ],
        "dnsSettings": {"dnsServers": [], "appliedDnsServers": []},
        "macAddress": nic["macAddress"],
        "enableAcceleratedNetworking": False,
        "enableIPForwarding": False,
    }
    if nic["nsgId"]:
        properties["networkSecurityGroup"] = {"id": nic["nsgId"]}
    properties["primary"] = True
    if nic.get("virtualMachineId"):
        properties["virtualMachine"] = {"id": nic["virtualMachineId"]}
    return {**_envelope(nic), "properties": properties}


def _render_ip_configuration(nic: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "provisioningState": SUCCEEDED,
        "privateIPAddress": config["privateIPAddress"],
        "privateIPAllocationMethod": config["privateIPAllocationMethod"],
    }
    if config["publicIPAddressId"]:
        properties["publicIPAddress"] = {"id": config["publicIPAddressId"]}
    properties["subnet"] = {"id": config["subnetId"]}
    properties["primary"] = config["primary"]
    properties["privateIPAddressVersion"] = "IPv6" if ":" in config["privateIPAddress"] else "IPv4"
    return {
        "name": config["name"],
        "id": _ip_configuration_id(nic, config),
        "properties": properties,
    }


def render_subnet(store: Store, subnet: Mapping[str, Any]) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "provisioningState": SUCCEEDED,
        "addressPrefix": subnet["addressPrefix"],
    }
    if subnet["nsgId"]:
        properties["networkSecurityGroup"] = {"id": subnet["nsgId"]}
    configurations = [
        {"id": _ip_configuration_id(nic, config)}
        for nic in store.of_type(NIC_TYPE)
        for config in nic["ipConfigurations"]
        if _same(config["subnetId"], subnet["id"])
    ]
    if configurations:
        properties["ipConfigurations"] = configurations
    properties["privateEndpointNetworkPolicies"] = "Disabled"
    properties["privateLinkServiceNetworkPolicies"] = "Enabled"
    return {
        "name": subnet["name"],
        "id": subnet["id"],
        "etag": subnet["etag"],
        "type": SUBNET_TYPE,
        "properties": properties,
    }


def render_vnet(store: Store, vnet: Mapping[str, Any]) -> dict[str, Any]:
    properties = {
        "provisioningState": SUCCEEDED,
        "resourceGuid": vnet["resourceGuid"],
        "addressSpace": {"addressPrefixes": list(vnet["addressPrefixes"])},
        "subnets": [render_subnet(store, subnet) for subnet in _subnets_of(store, vnet)],
    }
    return {**_envelope(vnet), "properties": properties}


def render_public_ip(store: Store, pip: Mapping[str, Any]) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "provisioningState": SUCCEEDED,
        "resourceGuid": pip["resourceGuid"],
        "ipAddress": pip["ipAddress"],
        "publicIPAddressVersion": "IPv6" if ":" in pip["ipAddress"] else "IPv4",
        "publicIPAllocationMethod": "Static",
        "idleTimeoutInMinutes": 4,
    }
    for nic in store.of_type(NIC_TYPE):
        for config in nic["ipConfigurations"]:
            if _same(config["publicIPAddressId"], pip["id"]):
                properties["ipConfiguration"] = {"id": _ip_configuration_id(nic, config)}
    envelope = _envelope(pip)
    return {**envelope, "sku": {"name": "Standard", "tier": "Regional"}, "properties": properties}


def _envelope(record: Mapping[str, Any]) -> dict[str, Any]:
    envelope: dict[str, Any] = {
        "name": record["name"],
        "id": record["id"],
        "etag": record["etag"],
        "type": record["type"],
        "location": record["location"],
    }
    if record.get("tags"):
        envelope["tags"] = dict(record["tags"])
    return envelope


def _ip_configuration_id(nic: Mapping[str, Any], config: Mapping[str, Any]) -> str:
    return f"{nic['id']}/ipConfigurations/{config['name']}"


def _subnets_of(store: Store, vnet: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    prefix = f"{vnet['id']}/subnets/".lower()
    return (
        subnet for subnet in store.of_type(SUBNET_TYPE) if subnet["id"].lower().startswith(prefix)
    )


def _same(left: str | None, right: str | None) -> bool:
    return left is not None and right is not None and left.lower() == right.lower()


# ---------------------------------------------------------------------------------- records


def new_nsg(
    nsg_id: str, name: str, location: str, tags: Mapping[str, str] | None = None
) -> dict[str, Any]:
    return {
        "id": nsg_id,
        "name": name,
        "type": NSG_TYPE,
        "location": location,
        "tags": dict(tags or {}),
        "etag": new_etag(),
        "defaultEtag": new_etag(),
        "resourceGuid": stable_guid(nsg_id, "resourceGuid"),
        "provisioningState": SUCCEEDED,
        "rules": {},
    }


def new_rule(nsg_id: str, name: str, properties: Mapping[str, Any], state: str) -> dict[str, Any]:
    return {
        "name": name,
        "id": f"{nsg_id}/securityRules/{name}",
        "etag": new_etag(),
        "type": RULE_TYPE,
        "properties": {"provisioningState": state, **properties},
    }


def _rule_content(rule: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in rule["properties"].items() if key != "provisioningState"}


def _named_rules(nsg: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    return [(rule["name"], rule["properties"]) for rule in nsg["rules"].values()]


# ---------------------------------------------------------------------------------- lookups


def _nsg_id(request: Request) -> str:
    name = request.params["networkSecurityGroupName"]
    return request.store.resource_id(request.group, NAMESPACE, "networkSecurityGroups", name)


def _nsg(request: Request) -> dict[str, Any]:
    nsg = request.store.get(_nsg_id(request))
    if nsg is None:
        name = request.params["networkSecurityGroupName"]
        raise resource_not_found(NSG_TYPE, name, request.group.name)
    return nsg


def _parent_nsg(request: Request, action: str, child: str = "securityRules") -> dict[str, Any]:
    nsg = request.store.get(_nsg_id(request))
    if nsg is None:
        raise parent_resource_not_found(action, f"networkSecurityGroups/{child}", _nsg_id(request))
    return nsg


def _top_level(request: Request, resource_type: str, segment: str, param: str) -> dict[str, Any]:
    name = request.params[param]
    record = request.store.get(request.store.resource_id(request.group, NAMESPACE, segment, name))
    if record is None:
        raise resource_not_found(resource_type, name, request.group.name)
    return record


# ---------------------------------------------------------------------------------- NSG handlers


def get_nsg(request: Request) -> Response:
    return Response(200, render_nsg(request.store, _nsg(request)))


def list_nsgs(request: Request) -> Response:
    group = request.params.get("resourceGroupName")
    values = [render_nsg(request.store, nsg) for nsg in request.store.of_type(NSG_TYPE, group)]
    return Response(200, {"value": values})


def put_nsg(request: Request) -> Response:
    name = request.params["networkSecurityGroupName"]
    rules.validate_name(name)
    store = request.store
    existing = store.get(_nsg_id(request))
    nsg_id = existing["id"] if existing else _nsg_id(request)
    if existing:
        request.ensure_idle(nsg_id)
    check_preconditions(request, existing["etag"] if existing else None, nsg_id)

    body = request.json_body()
    record = _nsg_from_body(body, existing, nsg_id, name)
    previous = copy.deepcopy(existing)
    store.put(record)
    headers = request.begin_operation(
        nsg_id, record["location"], _settle_nsg(record), _restore(store, nsg_id, previous)
    )
    return Response(200 if existing else 201, render_nsg(store, record), headers)


def _nsg_from_body(
    body: Mapping[str, Any],
    existing: Mapping[str, Any] | None,
    nsg_id: str,
    name: str,
) -> dict[str, Any]:
    location = body.get("location") or (existing["location"] if existing else None)
    if not location:
        raise bad_request(
            "LocationRequired", "The location property is required for this definition."
        )
    properties = body.get("properties") or {}
    tags = body.get("tags") if "tags" in body else (existing or {}).get("tags")
    if not isinstance(properties, Mapping) or not isinstance(tags or {}, Mapping):
        raise invalid_request_format()

    record = new_nsg(nsg_id, existing["name"] if existing else name, location, tags)
    if existing:
        record["defaultEtag"] = existing["defaultEtag"]
    record["provisioningState"] = UPDATING
    old_rules = existing["rules"] if existing else {}
    record["rules"] = _rules_from_body(nsg_id, properties.get("securityRules"), old_rules)
    return record


def _rules_from_body(
    nsg_id: str, items: Any, old_rules: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    if items is None:
        items = []
    if not isinstance(items, list) or not all(isinstance(item, Mapping) for item in items):
        raise invalid_request_format()
    if len(items) > rules.MAX_RULES:
        raise rules.count_limit_error()
    result: dict[str, dict[str, Any]] = {}
    for item in items:
        name = item.get("name")
        rules.validate_name(name)
        if name.lower() in result:
            message = f"Network security group {nsg_id} has two security rules named {name}."
            raise bad_request("DuplicateResourceName", message)
        properties = rules.validate_rule(f"{nsg_id}/securityRules/{name}", item.get("properties"))
        taken = [(rule["name"], rule["properties"]) for rule in result.values()]
        conflict = rules.priority_conflict(taken, name, properties)
        if conflict:
            raise rules.conflict_error(conflict, name)
        result[name.lower()] = _kept_or_new(nsg_id, name, properties, old_rules.get(name.lower()))
    return result


def _kept_or_new(
    nsg_id: str, name: str, properties: Mapping[str, Any], old: Mapping[str, Any] | None
) -> dict[str, Any]:
    """An unchanged rule keeps its name casing and ETag; a new or changed one is Updating."""
    if old is not None and _rule_content(old) == dict(properties):
        return copy.deepcopy(dict(old))
    return new_rule(nsg_id, old["name"] if old else name, properties, UPDATING)


def delete_nsg(request: Request) -> Response:
    store = request.store
    nsg = store.get(_nsg_id(request))
    if nsg is None:
        return Response(204)
    _ensure_unused(store, nsg)
    request.ensure_idle(nsg["id"])
    check_preconditions(request, nsg["etag"], nsg["id"])

    nsg["provisioningState"] = DELETING
    nsg_id = nsg["id"]

    def succeed() -> None:
        store.delete(nsg_id)

    def fail() -> None:
        nsg["provisioningState"] = SUCCEEDED

    headers = request.begin_operation(nsg_id, nsg["location"], succeed, fail, location_header=True)
    return Response(202, None, headers)


def _ensure_unused(store: Store, nsg: Mapping[str, Any]) -> None:
    users = [nic["id"] for nic in store.of_type(NIC_TYPE) if _same(nic["nsgId"], nsg["id"])]
    users += [sub["id"] for sub in store.of_type(SUBNET_TYPE) if _same(sub["nsgId"], nsg["id"])]
    if users:
        message = (
            f"Network security group {nsg['id']} cannot be deleted because it is in use by the "
            f"following resources: {', '.join(users)}. In order to delete the Network security "
            "group, remove the association with the resource(s)."
        )
        raise bad_request("InUseNetworkSecurityGroupCannotBeDeleted", message)


def _settle_nsg(record: dict[str, Any]) -> Callable[[], None]:
    def settle() -> None:
        record["provisioningState"] = SUCCEEDED
        for rule in record["rules"].values():
            rule["properties"]["provisioningState"] = SUCCEEDED

    return settle


def _restore(store: Store, nsg_id: str, previous: dict[str, Any] | None) -> Callable[[], None]:
    """Put the NSG back as it was before a write (or remove it if the write created it)."""

    def restore() -> None:
        if previous is None:
            store.delete(nsg_id)
        else:
            store.put(previous)

    return restore


# ---------------------------------------------------------------------------------- rule handlers


def get_rule(request: Request) -> Response:
    nsg = _parent_nsg(request, "read")
    rule = nsg["rules"].get(request.params["securityRuleName"].lower())
    if rule is None:
        raise child_not_found(f"{nsg['id']}/securityRules/{request.params['securityRuleName']}")
    return Response(200, render_rule(rule))


def list_rules(request: Request) -> Response:
    nsg = _parent_nsg(request, "read")
    return Response(200, {"value": [render_rule(rule) for rule in nsg["rules"].values()]})


def put_rule(request: Request) -> Response:
    name = request.params["securityRuleName"]
    rules.validate_name(name)
    nsg = _parent_nsg(request, "write")
    existing = nsg["rules"].get(name.lower())
    rule_id = existing["id"] if existing else f"{nsg['id']}/securityRules/{name}"
    request.ensure_idle(nsg["id"])
    check_preconditions(request, existing["etag"] if existing else None, rule_id)

    body = request.json_body()
    properties = rules.validate_rule(rule_id, body.get("properties"))
    if existing is None and len(nsg["rules"]) >= rules.MAX_RULES:
        raise rules.count_limit_error()
    conflict = rules.priority_conflict(_named_rules(nsg), name, properties)
    if conflict:
        raise rules.conflict_error(conflict, existing["name"] if existing else name)

    rule = new_rule(nsg["id"], existing["name"] if existing else name, properties, UPDATING)
    _write_rule(nsg, rule)
    headers = request.begin_operation(
        nsg["id"], nsg["location"], _settle_rule(rule), _restore_rule(nsg, rule, existing)
    )
    return Response(200 if existing else 201, render_rule(rule), headers)


def delete_rule(request: Request) -> Response:
    nsg = _parent_nsg(request, "delete")
    rule = nsg["rules"].get(request.params["securityRuleName"].lower())
    if rule is None:
        return Response(204)
    request.ensure_idle(nsg["id"])
    check_preconditions(request, rule["etag"], rule["id"])

    previous = copy.deepcopy(rule)
    rule["properties"]["provisioningState"] = DELETING
    nsg["etag"] = new_etag()

    def succeed() -> None:
        nsg["rules"].pop(rule["name"].lower(), None)
        nsg["etag"] = new_etag()

    headers = request.begin_operation(
        nsg["id"],
        nsg["location"],
        succeed,
        _restore_rule(nsg, rule, previous),
        location_header=True,
    )
    return Response(202, None, headers)


def _write_rule(nsg: dict[str, Any], rule: dict[str, Any]) -> None:
    nsg["rules"][rule["name"].lower()] = rule
    nsg["etag"] = new_etag()


def _settle_rule(rule: dict[str, Any]) -> Callable[[], None]:
    def settle() -> None:
        rule["properties"]["provisioningState"] = SUCCEEDED

    return settle


def _restore_rule(
    nsg: dict[str, Any], rule: Mapping[str, Any], previous: Mapping[str, Any] | None
) -> Callable[[], None]:
    """Undo a failed rule write: a failed create leaves no rule behind."""

    def restore() -> None:
        key = rule["name"].lower()
        if previous is None:
            nsg["rules"].pop(key, None)
        else:
            nsg["rules"][key] = copy.deepcopy(dict(previous))
        nsg["etag"] = new_etag()

    return restore


def list_default_rules(request: Request) -> Response:
    nsg = _parent_nsg(request, "read", "defaultSecurityRules")
    return Response(200, {"value": default_rules(nsg)})


def get_default_rule(request: Request) -> Response:
    nsg = _parent_nsg(request, "read", "defaultSecurityRules")
    wanted = request.params["defaultSecurityRuleName"].lower()
    for rule in default_rules(nsg):
        if rule["name"].lower() == wanted:
            return Response(200, rule)
    raise child_not_found(
        f"{nsg['id']}/defaultSecurityRules/{request.params['defaultSecurityRuleName']}"
    )


# ---------------------------------------------------------------------------------- other reads


def get_nic(request: Request) -> Response:
    return Response(
        200, render_nic(_top_level(request, NIC_TYPE, "networkInterfaces", "networkInterfaceName"))
    )


def list_nics(request: Request) -> Response:
    group = request.params.get("resourceGroupName")
    return Response(
        200, {"value": [render_nic(nic) for nic in request.store.of_type(NIC_TYPE, group)]}
    )


def get_public_ip(request: Request) -> Response:
    pip = _top_level(request, PIP_TYPE, "publicIPAddresses", "publicIpAddressName")
    return Response(200, render_public_ip(request.store, pip))


def list_public_ips(request: Request) -> Response:
    group = request.params.get("resourceGroupName")
    values = [
        render_public_ip(request.store, pip) for pip in request.store.of_type(PIP_TYPE, group)
    ]
    return Response(200, {"value": values})


def get_vnet(request: Request) -> Response:
    vnet = _top_level(request, VNET_TYPE, "virtualNetworks", "virtualNetworkName")
    return Response(200, render_vnet(request.store, vnet))


def get_subnet(request: Request) -> Response:
    vnet = _parent_vnet(request)
    subnet = request.store.get(f"{vnet['id']}/subnets/{request.params['subnetName']}")
    if subnet is None:
        raise child_not_found(f"{vnet['id']}/subnets/{request.params['subnetName']}")
    return Response(200, render_subnet(request.store, subnet))


def list_subnets(request: Request) -> Response:
    vnet = _parent_vnet(request)
    values = [render_subnet(request.store, subnet) for subnet in _subnets_of(request.store, vnet)]
    return Response(200, {"value": values})


def _parent_vnet(request: Request) -> dict[str, Any]:
    name = request.params["virtualNetworkName"]
    vnet_id = request.store.resource_id(request.group, NAMESPACE, "virtualNetworks", name)
    vnet = request.store.get(vnet_id)
    if vnet is None:
        raise parent_resource_not_found("read", "virtualNetworks/subnets", vnet_id)
    return vnet


# ---------------------------------------------------------------------------------- seed


def load_seed(store: Store, group: ResourceGroup, seed: Mapping[str, Any]) -> None:
    """Read ``networkSecurityGroups``, ``virtualNetworks``, ``publicIPAddresses`` and
    ``networkInterfaces`` of one resource group (see ``sandbox/seeds/README.md``)."""
    for item in seed.get("networkSecurityGroups", []):
        _seed_nsg(store, group, item)
    for item in seed.get("virtualNetworks", []):
        _seed_vnet(store, group, item)
    for item in seed.get("publicIPAddresses", []):
        _seed_public_ip(store, group, item)
    for item in seed.get("networkInterfaces", []):
        _seed_nic(store, group, item)


def _seed_nsg(store: Store, group: ResourceGroup, item: Mapping[str, Any]) -> None:
    name = item["name"]
    nsg_id = store.resource_id(group, NAMESPACE, "networkSecurityGroups", name)
    nsg = new_nsg(nsg_id, name, item.get("location", group.location), item.get("tags"))
    try:
        nsg["rules"] = _rules_from_body(nsg_id, item.get("securityRules", []), {})
    except ArmError as exc:
        raise ValueError(f"seed NSG {name}: {exc.code}: {exc.message}") from exc
    for rule in nsg["rules"].values():
        rule["properties"]["provisioningState"] = SUCCEEDED
    store.put(nsg)


def _seed_vnet(store: Store, group: ResourceGroup, item: Mapping[str, Any]) -> None:
    vnet_id = store.resource_id(group, NAMESPACE, "virtualNetworks", item["name"])
    store.put(
        {
            "id": vnet_id,
            "name": item["name"],
            "type": VNET_TYPE,
            "location": item.get("location", group.location),
            "tags": dict(item.get("tags", {})),
            "etag": new_etag(),
            "resourceGuid": stable_guid(vnet_id, "resourceGuid"),
            "addressPrefixes": list(item.get("addressPrefixes", [])),
        }
    )
    for subnet in item.get("subnets", []):
        nsg_ref = subnet.get("networkSecurityGroup")
        store.put(
            {
                "id": f"{vnet_id}/subnets/{subnet['name']}",
                "name": subnet["name"],
                "type": SUBNET_TYPE,
                "etag": new_etag(),
                "addressPrefix": subnet["addressPrefix"],
                "nsgId": _existing(store, group, nsg_ref, "networkSecurityGroups"),
            }
        )


def _seed_public_ip(store: Store, group: ResourceGroup, item: Mapping[str, Any]) -> None:
    pip_id = store.resource_id(group, NAMESPACE, "publicIPAddresses", item["name"])
    store.put(
        {
            "id": pip_id,
            "name": item["name"],
            "type": PIP_TYPE,
            "location": item.get("location", group.location),
            "tags": dict(item.get("tags", {})),
            "etag": new_etag(),
            "resourceGuid": stable_guid(pip_id, "resourceGuid"),
            "ipAddress": item["ipAddress"],
        }
    )


def _seed_nic(store: Store, group: ResourceGroup, item: Mapping[str, Any]) -> None:
    nic_id = store.resource_id(group, NAMESPACE, "networkInterfaces", item["name"])
    configs = item.get("ipConfigurations") or [{"name": "ipconfig1", **item}]
    store.put(
        {
            "id": nic_id,
            "name": item["name"],
            "type": NIC_TYPE,
            "location": item.get("location", group.location),
            "tags": dict(item.get("tags", {})),
            "etag": new_etag(),
            "resourceGuid": stable_guid(nic_id, "resourceGuid"),
            "macAddress": item.get("macAddress", _mac_address(nic_id)),
            "nsgId": _existing(
                store, group, item.get("networkSecurityGroup"), "networkSecurityGroups"
            ),
            "virtualMachineId": None,
            "ipConfigurations": [
                _seed_ip_configuration(store, group, config, index == 0)
                for index, config in enumerate(configs)
            ],
        }
    )


def _seed_ip_configuration(
    store: Store, group: ResourceGroup, config: Mapping[str, Any], primary: bool
) -> dict[str, Any]:
    return {
        "name": config.get("name", "ipconfig1"),
        "privateIPAddress": config["privateIPAddress"],
        "privateIPAllocationMethod": config.get("privateIPAllocationMethod", "Dynamic"),
        "subnetId": _existing(store, group, config["subnet"], "virtualNetworks"),
        "publicIPAddressId": _existing(
            store, group, config.get("publicIPAddress"), "publicIPAddresses"
        ),
        "primary": config.get("primary", primary),
    }


def _existing(store: Store, group: ResourceGroup, ref: str | None, kind: str) -> str | None:
    """The stored id a seed reference points at; a dangling reference is a seed error."""
    if ref is None:
        return None
    resource_id = resolve_ref(store, group, ref, NAMESPACE, kind)
    record = store.get(resource_id)
    if record is None:
        raise ValueError(f"seed reference {ref!r} ({kind}) does not name a seeded resource")
    return record["id"]


def _mac_address(resource_id: str) -> str:
    digits = stable_guid(resource_id, "mac").replace("-", "").upper()
    return "00-0D-3A-" + "-".join(digits[i : i + 2] for i in range(0, 6, 2))


# ---------------------------------------------------------------------------------- routes


def _routes() -> tuple[Route, ...]:
    sub = "/subscriptions/{subscriptionId}/providers/Microsoft.Network"
    group = "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers"
    group += "/Microsoft.Network"
    nic = f"{group}/networkInterfaces"
    pip = f"{group}/publicIPAddresses"
    vnet = f"{group}/virtualNetworks/{{virtualNetworkName}}"
    nsg = f"{group}/networkSecurityGroups/{{networkSecurityGroupName}}"
    rule = f"{nsg}/securityRules/{{securityRuleName}}"
    default = f"{nsg}/defaultSecurityRules"
    nsg_kind = "networkSecurityGroups"
    rule_kind = f"{nsg_kind}/securityRules"
    default_kind = f"{nsg_kind}/defaultSecurityRules"
    table: list[tuple[str, str, Callable[[Request], Response], str]] = [
        ("GET", f"{nic}/{{networkInterfaceName}}", get_nic, "networkInterfaces"),
        ("GET", nic, list_nics, "networkInterfaces"),
        ("GET", f"{sub}/networkInterfaces", list_nics, "networkInterfaces"),
        ("GET", f"{pip}/{{publicIpAddressName}}", get_public_ip, "publicIPAddresses"),
        ("GET", pip, list_public_ips, "publicIPAddresses"),
        ("GET", vnet, get_vnet, "virtualNetworks"),
        ("GET", f"{vnet}/subnets/{{subnetName}}", get_subnet, "virtualNetworks/subnets"),
        ("GET", f"{vnet}/subnets", list_subnets, "virtualNetworks/subnets"),
        ("GET", nsg, get_nsg, nsg_kind),
        ("PUT", nsg, put_nsg, nsg_kind),
        ("DELETE", nsg, delete_nsg, nsg_kind),
        ("GET", f"{group}/networkSecurityGroups", list_nsgs, nsg_kind),
        ("GET", f"{sub}/networkSecurityGroups", list_nsgs, nsg_kind),
        ("GET", rule, get_rule, rule_kind),
        ("PUT", rule, put_rule, rule_kind),
        ("DELETE", rule, delete_rule, rule_kind),
        ("GET", f"{nsg}/securityRules", list_rules, rule_kind),
        ("GET", default, list_default_rules, default_kind),
        ("GET", f"{default}/{{defaultSecurityRuleName}}", get_default_rule, default_kind),
    ]
    return tuple(
        Route(method, template, handler, API_VERSIONS, kind)
        for method, template, handler, kind in table
    )


PROVIDER = Provider(
    namespace=NAMESPACE,
    routes=_routes(),
    load_seed=load_seed,
    api_versions=API_VERSIONS,
    uses_operations=True,
)
