"""In-memory stand-ins for the engine's collaborators, for unit tests of the engine."""

from __future__ import annotations

import copy
import threading
from typing import Any

from jitcore.azure.inventory import VmNetwork
from jitcore.errors import CloudError
from jitcore.model import AccessRequest, Grant
from jitcore.notify import Posted, RestoreReport

NSG = (
    "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/networkSecurityGroups/nsg-web01"
)
DENY = {
    "name": "jitbot-deny-vm-web01",
    "properties": {
        "protocol": "*",
        "sourceAddressPrefix": "*",
        "destinationAddressPrefix": "10.0.1.4",
        "destinationPortRanges": ["22", "3389"],
        "sourcePortRange": "*",
        "access": "Deny",
        "priority": 1000,
        "direction": "Inbound",
        "description": "jitbot: JIT deny for vm-web01",
    },
}


class FakeCloud:
    """One VM behind one NSG; failures can be queued per operation."""

    def __init__(self, nsg_ids: tuple[str, ...] = (NSG,)) -> None:
        self.rules: dict[str, dict[str, dict[str, Any]]] = {
            n: {DENY["name"]: copy.deepcopy(DENY)} for n in nsg_ids
        }
        self.nsg_ids = nsg_ids
        self.failures: dict[str, list[CloudError]] = {}
        self.writes: list[tuple[str, str, str]] = []
        self._locks: dict[str, threading.Lock] = {}

    def fail_next(self, operation: str, error: CloudError) -> None:
        self.failures.setdefault(operation, []).append(error)

    def _maybe_fail(self, operation: str) -> None:
        queued = self.failures.get(operation)
        if queued:
            raise queued.pop(0)

    def network_of(self, vm: str) -> VmNetwork:
        self._maybe_fail("network_of")
        return VmNetwork(
            vm_id=f"/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/{vm}",
            vm_name=vm,
            location="westeurope",
            private_ips=("10.0.1.4",),
            public_ips=(),
            nsg_ids=self.nsg_ids,
        )

    def lock_for(self, nsg_id: str) -> threading.Lock:
        return self._locks.setdefault(nsg_id, threading.Lock())

    def custom_rules(self, nsg_id: str) -> list[dict[str, Any]]:
        self._maybe_fail("custom_rules")
        return copy.deepcopy(list(self.rules[nsg_id].values()))

    def get_rule(self, nsg_id: str, name: str) -> dict[str, Any] | None:
        self._maybe_fail("get_rule")
        rule = self.rules[nsg_id].get(name)
        return copy.deepcopy(rule) if rule else None

    def create_rule(self, nsg_id: str, name: str, properties: dict[str, Any]) -> dict[str, Any]:
        self._maybe_fail("create_rule")
        self.writes.append(("create", nsg_id, name))
        self.rules[nsg_id][name] = {"name": name, "properties": copy.deepcopy(properties)}
        return self.rules[nsg_id][name]

    def delete_rule(self, nsg_id: str, name: str) -> None:
        self._maybe_fail("delete_rule")
        self.writes.append(("delete", nsg_id, name))
        self.rules[nsg_id].pop(name, None)


class RecordingNotifier:
    def __init__(self) -> None:
        self.events: list[tuple[str, int | None]] = []
        self.reports: list[RestoreReport] = []

    def request_submitted(self, request: AccessRequest) -> Posted | None:
        self.events.append(("submitted", request.id))
        return Posted("C0OPS12345", f"1700000000.{request.id:06d}")

    def request_approved(self, request: AccessRequest) -> None:
        self.events.append(("approved", request.id))

    def request_denied(self, request: AccessRequest) -> None:
        self.events.append(("denied", request.id))

    def request_granted(self, request: AccessRequest, grants: list[Grant]) -> None:
        self.events.append(("granted", request.id))

    def request_failed(self, request: AccessRequest, reason: str) -> None:
        self.events.append(("failed", request.id))

    def request_closed(self, request: AccessRequest, report: RestoreReport) -> None:
        self.events.append(("closed", request.id))
        self.reports.append(report)

    def request_expired_unapproved(self, request: AccessRequest) -> None:
        self.events.append(("expired_unapproved", request.id))
