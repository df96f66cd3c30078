"""Adapters over the Azure SDKs. Nothing outside this package imports an Azure SDK."""

from __future__ import annotations

import threading
from typing import Any

from jitcore.azure.clients import AzureTarget
from jitcore.azure.inventory import Inventory, VmNetwork
from jitcore.azure.nsg import NsgGateway


class AzureNetwork:
    """The network side of one subscription: where a VM sits, and its NSGs' rules."""

    def __init__(self, target: AzureTarget) -> None:
        self.inventory = Inventory(target)
        self.nsgs = NsgGateway(target)

    def close(self) -> None:
        self.inventory.close()
        self.nsgs.close()

    def vm_names(self) -> list[str]:
        return self.inventory.vm_names()

    def network_of(self, vm: str) -> VmNetwork:
        return self.inventory.network_of(vm)

    def lock_for(self, nsg_id: str) -> threading.Lock:
        return self.nsgs.lock_for(nsg_id)

    def custom_rules(self, nsg_id: str) -> list[dict[str, Any]]:
        return self.nsgs.custom_rules(nsg_id)

    def get_rule(self, nsg_id: str, name: str) -> dict[str, Any] | None:
        return self.nsgs.get_rule(nsg_id, name)

    def create_rule(self, nsg_id: str, name: str, properties: dict[str, Any]) -> dict[str, Any]:
        return self.nsgs.create_rule(nsg_id, name, properties)

    def delete_rule(self, nsg_id: str, name: str) -> None:
        self.nsgs.delete_rule(nsg_id, name)


__all__ = ["AzureNetwork", "AzureTarget", "VmNetwork"]
