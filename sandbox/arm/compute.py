"""Microsoft.Compute: virtual machines, read-only (GET one, list by group and by subscription).

The shape follows ``compute/VirtualMachines_Get.json`` (2025-11-01): ``vmId``, hardware, storage
and OS profiles, ``networkProfile.networkInterfaces[].id``, ``provisioningState``, location and
tags. ``instanceView`` is not modelled.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from sandbox.arm.errors import resource_not_found
from sandbox.arm.provider import Provider, Request, Response, Route
from sandbox.arm.state import ResourceGroup, Store, resolve_ref, stable_guid

NAMESPACE = "Microsoft.Compute"
API_VERSIONS = ("2025-11-01", "2026-04-01")
VM_TYPE = "Microsoft.Compute/virtualMachines"
NIC_TYPE = "Microsoft.Network/networkInterfaces"


def render_vm(vm: Mapping[str, Any]) -> dict[str, Any]:
    os_disk_name = f"{vm['name']}_OsDisk_1"
    group_id = vm["id"].split("/providers/")[0]
    os_profile: dict[str, Any] = {
        "computerName": vm["computerName"],
        "adminUsername": vm["adminUsername"],
    }
    if vm["osType"] == "Windows":
        os_profile["windowsConfiguration"] = {
            "provisionVMAgent": True,
            "enableAutomaticUpdates": True,
        }
    else:
        os_profile["linuxConfiguration"] = {
            "disablePasswordAuthentication": True,
            "provisionVMAgent": True,
        }
    os_profile["secrets"] = []
    properties = {
        "vmId": vm["vmId"],
        "hardwareProfile": {"vmSize": vm["vmSize"]},
        "storageProfile": {
            "osDisk": {
                "osType": vm["osType"],
                "name": os_disk_name,
                "createOption": "FromImage",
                "caching": "ReadWrite",
                "managedDisk": {
                    "storageAccountType": "Premium_LRS",
                    "id": f"{group_id}/providers/Microsoft.Compute/disks/{os_disk_name}",
                },
                "diskSizeGB": 30,
            },
            "dataDisks": [],
        },
        "osProfile": os_profile,
        "networkProfile": {"networkInterfaces": [{"id": nic_id} for nic_id in vm["nicIds"]]},
        "provisioningState": "Succeeded",
        "timeCreated": vm["timeCreated"],
    }
    body: dict[str, Any] = {
        "name": vm["name"],
        "id": vm["id"],
        "type": VM_TYPE,
        "location": vm["location"],
    }
    if vm["tags"]:
        body["tags"] = dict(vm["tags"])
    body["etag"] = vm["etag"]
    body["properties"] = properties
    return body


def get_vm(request: Request) -> Response:
    name = request.params["vmName"]
    vm = request.store.get(
        request.store.resource_id(request.group, NAMESPACE, "virtualMachines", name)
    )
    if vm is None:
        raise resource_not_found(VM_TYPE, name, request.group.name)
    return Response(200, render_vm(vm))


def list_vms(request: Request) -> Response:
    group = request.params.get("resourceGroupName")
    return Response(200, {"value": [render_vm(vm) for vm in request.store.of_type(VM_TYPE, group)]})


def load_seed(store: Store, group: ResourceGroup, seed: Mapping[str, Any]) -> None:
    """Read ``virtualMachines`` of one resource group; links each NIC back to its VM."""
    for item in seed.get("virtualMachines", []):
        vm_id = store.resource_id(group, NAMESPACE, "virtualMachines", item["name"])
        nic_ids = [_link_nic(store, group, ref, vm_id) for ref in item.get("networkInterfaces", [])]
        store.put(
            {
                "id": vm_id,
                "name": item["name"],
                "type": VM_TYPE,
                "location": item.get("location", group.location),
                "tags": dict(item.get("tags", {})),
                "etag": '"1"',
                "vmId": item.get("vmId", stable_guid(vm_id, "vmId")),
                "vmSize": item.get("vmSize", "Standard_B2s"),
                "osType": item.get("osType", "Linux"),
                "computerName": item.get("computerName", item["name"]),
                "adminUsername": item.get("adminUsername", "azureuser"),
                "timeCreated": item.get("timeCreated", _now()),
                "nicIds": nic_ids,
            }
        )


def _link_nic(store: Store, group: ResourceGroup, ref: str, vm_id: str) -> str:
    nic = store.get(resolve_ref(store, group, ref, "Microsoft.Network", "networkInterfaces"))
    if nic is None or nic["type"] != NIC_TYPE:
        raise ValueError(f"seed VM {vm_id}: network interface {ref!r} is not seeded")
    nic["virtualMachineId"] = vm_id
    return nic["id"]


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


def _routes() -> tuple[Route, ...]:
    sub = "/subscriptions/{subscriptionId}/providers/Microsoft.Compute"
    group = "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers"
    group += "/Microsoft.Compute"
    return (
        Route(
            "GET", f"{group}/virtualMachines/{{vmName}}", get_vm, API_VERSIONS, "virtualMachines"
        ),
        Route("GET", f"{group}/virtualMachines", list_vms, API_VERSIONS, "virtualMachines"),
        Route("GET", f"{sub}/virtualMachines", list_vms, API_VERSIONS, "virtualMachines"),
    )


PROVIDER = Provider(
    namespace=NAMESPACE,
    routes=_routes(),
    load_seed=load_seed,
    api_versions=API_VERSIONS,
)
