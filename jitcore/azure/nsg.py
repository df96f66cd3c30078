"""Reading an NSG and writing or removing the single rules jitbot owns in it.

jitbot never PUTs a whole NSG: it writes one security rule at a time, so a concurrent
edit by someone else to another rule is never overwritten. Writes to one NSG are
serialised inside the process; Azure's own "another operation in progress" and
throttling answers are retried with backoff.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from azure.core.exceptions import ResourceNotFoundError

from jitcore.azure.clients import (
    NETWORK_API_VERSION,
    AzureTarget,
    as_json,
    network_client,
)
from jitcore.azure.clients import parse_resource_id as _parts
from jitcore.azure.retry import Retrier
from jitcore.observe import Observer

log = logging.getLogger(__name__)

T = TypeVar("T")


class NsgGateway:
    """The NSG operations the engine needs, against one subscription."""

    def __init__(
        self,
        target: AzureTarget,
        attempts: int = 8,
        backoff: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._client = network_client(target)
        self._polling_interval = target.polling_interval
        self._retrier = Retrier(attempts=attempts, backoff=backoff, sleep=sleep)
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    @property
    def observer(self) -> Observer:
        return self._retrier.observer

    @observer.setter
    def observer(self, observer: Observer) -> None:
        self._retrier.observer = observer

    def close(self) -> None:
        self._client.close()

    def lock_for(self, nsg_id: str) -> threading.Lock:
        """The lock serialising writes to one NSG (ids compare case-insensitively)."""
        with self._locks_guard:
            return self._locks.setdefault(nsg_id.lower(), threading.Lock())

    def custom_rules(self, nsg_id: str) -> list[dict[str, Any]]:
        """The NSG's custom security rules as ARM JSON (default rules left out)."""
        parts = _parts(nsg_id)

        def read() -> list[dict[str, Any]]:
            nsg = self._client.network_security_groups.get(
                parts["resource_group"], parts["name"], api_version=NETWORK_API_VERSION
            )
            return as_json(nsg).get("properties", {}).get("securityRules", [])

        return self._retrier.run(read, f"read the NSG {parts['name']}")

    def create_rule(self, nsg_id: str, name: str, properties: dict[str, Any]) -> dict[str, Any]:
        """PUT one rule and follow the long-running operation to its end."""
        parts = _parts(nsg_id)

        def write() -> dict[str, Any]:
            poller = self._client.security_rules.begin_create_or_update(
                parts["resource_group"],
                parts["name"],
                name,
                {"properties": properties},
                api_version=NETWORK_API_VERSION,
                polling_interval=self._polling_interval,
            )
            return as_json(poller.result())

        return self._retrier.run(write, f"create the rule {name} in {parts['name']}")

    def delete_rule(self, nsg_id: str, name: str) -> None:
        """DELETE one rule and follow the operation; a rule already gone counts as deleted."""
        parts = _parts(nsg_id)

        def remove() -> None:
            try:
                poller = self._client.security_rules.begin_delete(
                    parts["resource_group"],
                    parts["name"],
                    name,
                    api_version=NETWORK_API_VERSION,
                    polling_interval=self._polling_interval,
                )
                poller.result()
            except ResourceNotFoundError:
                log.info("rule %s was already gone from %s", name, parts["name"])

        self._retrier.run(remove, f"delete the rule {name} from {parts['name']}")

    def get_rule(self, nsg_id: str, name: str) -> dict[str, Any] | None:
        parts = _parts(nsg_id)

        def read() -> dict[str, Any] | None:
            try:
                rule = self._client.security_rules.get(
                    parts["resource_group"], parts["name"], name, api_version=NETWORK_API_VERSION
                )
            except ResourceNotFoundError:
                return None
            return as_json(rule)

        return self._retrier.run(read, f"read the rule {name} in {parts['name']}")
