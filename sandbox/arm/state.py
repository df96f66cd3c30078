"""The stand-in's in-memory subscription: resource groups and resource records.

Records are plain JSON-able dicts owned by the provider module that made them; each has at
least ``id`` (stored casing) and ``type``. Lookups are case-insensitive on the id, as in ARM.
One re-entrant lock guards the whole store: request handlers run under it, so a handler sees
and leaves a consistent subscription.
"""

from __future__ import annotations

import copy
import json
import threading
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_SEED = Path(__file__).resolve().parents[1] / "seeds" / "default.json"


def new_etag() -> str:
    """A weak ETag in the form Microsoft.Network uses: ``W/"<uuid>"``."""
    return f'W/"{uuid.uuid4()}"'


def stable_guid(resource_id: str, purpose: str) -> str:
    """A GUID derived from a resource id, so a seed gives the same vmId/resourceGuid each run."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{purpose}:{resource_id.lower()}"))


def id_key(resource_id: str) -> str:
    return resource_id.rstrip("/").lower()


@dataclass
class ResourceGroup:
    name: str
    location: str
    id: str


class Store:
    """Resource groups and resource records of one subscription."""

    def __init__(self, subscription_id: str, tenant_id: str) -> None:
        self.lock = threading.RLock()
        self.subscription_id = subscription_id
        self.tenant_id = tenant_id
        self._groups: dict[str, ResourceGroup] = {}
        self._resources: dict[str, dict[str, Any]] = {}
        # Per-provider behaviour settings (not resources), keyed by provider module.
        self.settings: dict[str, dict[str, Any]] = {}

    @property
    def default_location(self) -> str:
        for group in self._groups.values():
            return group.location
        return "westeurope"

    def add_group(self, name: str, location: str) -> ResourceGroup:
        group = ResourceGroup(
            name, location, f"/subscriptions/{self.subscription_id}/resourceGroups/{name}"
        )
        self._groups[name.lower()] = group
        return group

    def group(self, name: str) -> ResourceGroup | None:
        return self._groups.get(name.lower())

    def groups(self) -> list[ResourceGroup]:
        return list(self._groups.values())

    def resource_id(self, group: ResourceGroup, namespace: str, *parts: str) -> str:
        """``/subscriptions/../resourceGroups/<rg>/providers/<namespace>/<type>/<name>/...``."""
        return "/".join([group.id, "providers", namespace, *parts])

    def get(self, resource_id: str) -> dict[str, Any] | None:
        return self._resources.get(id_key(resource_id))

    def put(self, record: dict[str, Any]) -> None:
        self._resources[id_key(record["id"])] = record

    def delete(self, resource_id: str) -> None:
        self._resources.pop(id_key(resource_id), None)

    def of_type(self, resource_type: str, group: str | None = None) -> Iterator[dict[str, Any]]:
        """Records of one type, in insertion order, optionally limited to one resource group."""
        prefix = None
        if group is not None:
            found = self.group(group)
            prefix = (found.id if found else f"/{group}").lower() + "/"
        for key, record in list(self._resources.items()):
            if record["type"].lower() != resource_type.lower():
                continue
            if prefix is None or key.startswith(prefix):
                yield record

    def dump(self) -> dict[str, Any]:
        """Everything, as JSON-able data, for ``GET /sandbox/state``."""
        return {
            "subscriptionId": self.subscription_id,
            "tenantId": self.tenant_id,
            "resourceGroups": [vars(group).copy() for group in self._groups.values()],
            "resources": copy.deepcopy(list(self._resources.values())),
        }


def read_seed(seed: str | Path | Mapping[str, Any] | None) -> dict[str, Any]:
    """The seed as a dict: ``None`` means the bundled ``sandbox/seeds/default.json``."""
    if seed is None:
        seed = DEFAULT_SEED
    if isinstance(seed, Mapping):
        return copy.deepcopy(dict(seed))
    return json.loads(Path(seed).read_text(encoding="utf-8"))


def resolve_ref(store: Store, group: ResourceGroup, ref: str, namespace: str, *kind: str) -> str:
    """A seed reference as a resource id: a full id as is, else a name in ``group``.

    ``kind`` is the path of types before the name, e.g. ``("virtualNetworks",)`` with
    ``ref="vnet/subnets/snet"`` or ``("networkInterfaces",)`` with ``ref="nic-web01"``.
    """
    if ref.startswith("/subscriptions/"):
        return ref
    return store.resource_id(group, namespace, *kind, *ref.split("/"))
