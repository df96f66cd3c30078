"""Defender for Cloud JIT over azure-mgmt-security: the plan check, the JIT policies of a
resource group and region, and initiate.

Api-versions are pinned: jitNetworkAccessPolicies 2020-01-01 (the newest stable one) and
pricings 2024-01-01. Policies are read and written as raw ARM JSON rather than through
the SDK's models, so that a read-modify-write sends back every field Defender returned,
including ones these models do not know.

Initiate is not idempotent (a second call supersedes the first), so it is never retried
blindly: azure-core's own retries are turned off for it, and only a 429 (which Azure
did not act on) is tried again. Reads and the policy PUT are retried like other writes.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from jitcore.azure.clients import AzureTarget, cloud_error, parse_resource_id
from jitcore.azure.inventory import Inventory
from jitcore.azure.retry import Retrier, retry_after
from jitcore.errors import CloudError

log = logging.getLogger(__name__)

JIT_API_VERSION = "2020-01-01"
PRICINGS_API_VERSION = "2024-01-01"
INITIATE_THROTTLE_TRIES = 4


@dataclass(frozen=True)
class VmPlace:
    """Where a VM is, as Defender's JIT paths need it."""

    vm_id: str
    vm_name: str
    subscription_id: str
    resource_group: str
    location: str


def _raw(pipeline_response: Any, _deserialized: Any, _headers: Any) -> Any:
    """``cls`` hook: the answer's JSON as Azure sent it."""
    return json.loads(pipeline_response.http_response.text())


def security_client(target: AzureTarget) -> Any:
    from azure.mgmt.security import SecurityCenter

    return SecurityCenter(target.credential, target.subscription_id, **target.kwargs())


class DefenderGateway:
    """The Defender operations the engine needs, against one subscription."""

    def __init__(
        self,
        target: AzureTarget,
        attempts: int = 6,
        backoff: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.subscription_id = target.subscription_id
        self._client = security_client(target)
        self._inventory = Inventory(target)
        self._retrier = Retrier(attempts=attempts, backoff=backoff, sleep=sleep)
        self._sleep = sleep
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def close(self) -> None:
        self._client.close()
        self._inventory.close()

    def lock_for(self, resource_group: str, location: str) -> threading.Lock:
        """Serialises read-modify-writes of the policies of one resource group and region."""
        key = f"{resource_group.lower()}|{location.lower()}"
        with self._locks_guard:
            return self._locks.setdefault(key, threading.Lock())

    def locate(self, vm: str) -> VmPlace:
        found = self._inventory.find_vm(vm)
        parts = parse_resource_id(str(found["id"]))
        return VmPlace(
            vm_id=str(found["id"]),
            vm_name=str(found["name"]),
            subscription_id=parts["subscription"],
            resource_group=parts["resource_group"],
            location=str(found.get("location", "")),
        )

    def plan(self, subscription_id: str) -> dict[str, Any] | None:
        """The subscription's ``VirtualMachines`` pricing (Defender for Servers), as read."""

        def read() -> dict[str, Any] | None:
            try:
                return self._client.pricings.get(
                    f"subscriptions/{subscription_id}",
                    "VirtualMachines",
                    api_version=PRICINGS_API_VERSION,
                    cls=_raw,
                )
            except ResourceNotFoundError:
                return None

        return self._retrier.run(read, f"read the Defender plan of {subscription_id}")

    def policies_in(self, resource_group: str, location: str) -> list[dict[str, Any]]:
        """Every JIT policy of a resource group and region (names as Defender has them)."""

        def read() -> list[dict[str, Any]]:
            pages = self._client.jit_network_access_policies.list_by_resource_group_and_region(
                resource_group, location, api_version=JIT_API_VERSION
            )
            return [policy.serialize(keep_readonly=True) for policy in pages]

        return self._retrier.run(read, f"list the JIT policies of {resource_group} in {location}")

    def get_policy(self, resource_group: str, location: str, name: str) -> dict[str, Any] | None:
        def read() -> dict[str, Any] | None:
            try:
                return self._client.jit_network_access_policies.get(
                    resource_group, location, name, api_version=JIT_API_VERSION, cls=_raw
                )
            except ResourceNotFoundError:
                return None

        return self._retrier.run(read, f"read the JIT policy {name} of {resource_group}")

    def put_policy(
        self, resource_group: str, location: str, name: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        def write() -> dict[str, Any]:
            return self._client.jit_network_access_policies.create_or_update(
                resource_group,
                location,
                name,
                json.dumps(body).encode(),
                content_type="application/json",
                api_version=JIT_API_VERSION,
                cls=_raw,
            )

        return self._retrier.run(write, f"write the JIT policy {name} of {resource_group}")

    def initiate(
        self, resource_group: str, location: str, name: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        """POST initiate once; a 429 is tried again after Retry-After, nothing else is."""
        doing = f"initiate JIT access through the policy {name} of {resource_group}"
        for attempt in range(1, INITIATE_THROTTLE_TRIES + 1):
            try:
                return self._client.jit_network_access_policies.initiate(
                    resource_group,
                    location,
                    name,
                    json.dumps(body).encode(),
                    content_type="application/json",
                    api_version=JIT_API_VERSION,
                    retry_total=0,
                    cls=_raw,
                )
            except HttpResponseError as exc:
                if exc.status_code != 429 or attempt == INITIATE_THROTTLE_TRIES:
                    raise cloud_error(exc, doing) from exc
                delay = retry_after(exc) or float(attempt)
                log.warning("Azure throttled %s; retry %d in %.1fs", doing, attempt, delay)
                self._sleep(delay)
        raise CloudError(f"gave up trying to {doing}")  # pragma: no cover
