"""What stands between the internet and a VM: its NICs, their NSGs and the subnets' NSGs."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from jitcore.azure.clients import (
    COMPUTE_API_VERSION,
    NETWORK_API_VERSION,
    AzureTarget,
    as_json,
    cloud_error,
    compute_client,
    network_client,
    parse_resource_id,
)
from jitcore.errors import CloudError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VmNetwork:
    """A VM's network path. ``nsg_ids`` lists subnet NSGs first, then NIC NSGs, the order
    in which Azure evaluates inbound traffic."""

    vm_id: str
    vm_name: str
    location: str
    private_ips: tuple[str, ...]
    public_ips: tuple[str, ...]
    nsg_ids: tuple[str, ...]

    @property
    def primary_private_ip(self) -> str:
        return self.private_ips[0]


class Inventory:
    def __init__(self, target: AzureTarget) -> None:
        self._compute = compute_client(target)
        self._network = network_client(target)

    def close(self) -> None:
        self._compute.close()
        self._network.close()

    def find_vm(self, name_or_id: str) -> dict[str, Any]:
        """A VM by resource id, or by name (case-insensitive) anywhere in the subscription."""
        try:
            if name_or_id.startswith("/"):
                parts = parse_resource_id(name_or_id)
                vm = self._compute.virtual_machines.get(
                    parts["resource_group"], parts["name"], api_version=COMPUTE_API_VERSION
                )
                return as_json(vm)
            wanted = name_or_id.lower()
            for vm in self._compute.virtual_machines.list_all(api_version=COMPUTE_API_VERSION):
                if vm.name.lower() == wanted:
                    return as_json(vm)
        except ResourceNotFoundError:
            pass
        except HttpResponseError as exc:
            raise cloud_error(exc, f"look up the VM {name_or_id}") from exc
        raise CloudError(f"the VM {name_or_id} was not found in the subscription", code="NotFound")

    def vm_names(self) -> list[str]:
        """Names of every VM in the subscription."""
        try:
            vms = self._compute.virtual_machines.list_all(api_version=COMPUTE_API_VERSION)
            return sorted(vm.name for vm in vms)
        except HttpResponseError as exc:
            raise cloud_error(exc, "list the VMs of the subscription") from exc

    def network_of(self, name_or_id: str) -> VmNetwork:
        vm = self.find_vm(name_or_id)
        nic_refs = vm.get("properties", {}).get("networkProfile", {}).get("networkInterfaces", [])
        private_ips: list[str] = []
        public_ips: list[str] = []
        subnet_nsgs: list[str] = []
        nic_nsgs: list[str] = []
        try:
            for ref in nic_refs:
                nic = self._get("network_interfaces", ref["id"])
                props = nic.get("properties", {})
                nsg = (props.get("networkSecurityGroup") or {}).get("id")
                if nsg and nsg.lower() not in {n.lower() for n in nic_nsgs}:
                    nic_nsgs.append(nsg)
                for config in props.get("ipConfigurations", []):
                    config_props = config.get("properties", {})
                    if config_props.get("privateIPAddress"):
                        private_ips.append(config_props["privateIPAddress"].split("/")[0])
                    public_ref = (config_props.get("publicIPAddress") or {}).get("id")
                    if public_ref:
                        address = self._public_ip(public_ref)
                        if address:
                            public_ips.append(address)
                    subnet_ref = (config_props.get("subnet") or {}).get("id")
                    if subnet_ref:
                        subnet_nsg = self._subnet_nsg(subnet_ref)
                        if subnet_nsg and subnet_nsg.lower() not in {
                            n.lower() for n in subnet_nsgs
                        }:
                            subnet_nsgs.append(subnet_nsg)
        except HttpResponseError as exc:
            raise cloud_error(exc, f"read the network of {vm['name']}") from exc
        if not private_ips:
            raise CloudError(f"{vm['name']} has no private IP address on any NIC")
        return VmNetwork(
            vm_id=vm["id"],
            vm_name=vm["name"],
            location=vm.get("location", ""),
            private_ips=tuple(private_ips),
            public_ips=tuple(public_ips),
            nsg_ids=tuple(subnet_nsgs + nic_nsgs),
        )

    def _get(self, kind: str, resource_id: str) -> dict[str, Any]:
        parts = parse_resource_id(resource_id)
        operations = getattr(self._network, kind)
        return as_json(
            operations.get(parts["resource_group"], parts["name"], api_version=NETWORK_API_VERSION)
        )

    def _public_ip(self, resource_id: str) -> str | None:
        return self._get("public_ip_addresses", resource_id).get("properties", {}).get("ipAddress")

    def _subnet_nsg(self, subnet_id: str) -> str | None:
        parts = parse_resource_id(subnet_id)
        subnet = self._network.subnets.get(
            parts["resource_group"], parts["parent"], parts["name"], api_version=NETWORK_API_VERSION
        )
        return (as_json(subnet).get("properties", {}).get("networkSecurityGroup") or {}).get("id")
