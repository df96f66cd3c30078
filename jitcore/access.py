"""Who may do what: the Azure actions each jitbot operation needs, and a short-lived cache
of the answers.

- ``REQUEST`` (``/jit request``, and an approver's Approve): ``rbac.request_actions``,
  with ``publicIPAddresses/read`` when the VM has a public IP, at the VM;
- ``READ`` (``/jit list``): ``VIEW_ACTIONS`` at the VM of each request listed;
- ``CONFIGURE`` (``/jit admin``, and ``policy`` commands when they exist):
  ``rbac.CONFIGURE_ACTIONS`` at the subscription.

``VIEW_ACTIONS`` is ``jitNetworkAccessPolicies/read`` alone, not ``rbac.READ_ACTIONS``:
Defender's page lists ``initiate/action`` and ``virtualMachines/read`` among the read
actions, yet says Reader and Security Reader can view JIT status; Reader lacks the first
and Security Reader both, so the documented set would refuse the very roles the page
names. The JIT read action is what both hold and what viewing JIT status is about.

Answers are cached for ``ttl`` seconds, so a revoked role stops new requests at most
``ttl`` after the revocation; approval checks pass ``fresh=True`` and read Azure again.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from jitcore import rbac
from jitcore.errors import NotAuthorized

log = logging.getLogger(__name__)

VIEW_ACTIONS: tuple[str, ...] = (rbac.JIT_POLICY_READ_ACTION,)
MAX_CACHE_ENTRIES = 5000


class Operation(enum.StrEnum):
    READ = "read"
    REQUEST = "request"
    CONFIGURE = "configure"


def required_actions(operation: Operation, vm_has_public_ip: bool = False) -> tuple[str, ...]:
    if operation is Operation.REQUEST:
        return rbac.request_actions(vm_has_public_ip)
    if operation is Operation.CONFIGURE:
        return rbac.CONFIGURE_ACTIONS
    return VIEW_ACTIONS


@dataclass(frozen=True)
class VmTarget:
    """A VM as RBAC sees it: its resource id (the scope checked) and whether it has a
    public IP address (which adds an action to the request set)."""

    name: str
    resource_id: str
    has_public_ip: bool


class AccessRefused(NotAuthorized):
    """The principal lacks Azure actions at a scope; ``decision`` says which and why."""

    def __init__(self, operation: Operation, decision: rbac.AccessDecision) -> None:
        missing = ", ".join(decision.missing)
        super().__init__(f"missing {missing} at {decision.scope}")
        self.operation = operation
        self.decision = decision


class Authorizer(Protocol):
    def decide(
        self,
        resource_id: str,
        object_id: str,
        group_ids: Iterable[str],
        required_actions: Iterable[str],
        *,
        fresh: bool = False,
    ) -> rbac.AccessDecision: ...


class GroupSource(Protocol):
    def transitive_group_ids(self, object_id: str) -> tuple[str, ...]: ...


class NetworkLocator(Protocol):
    def network_of(self, vm: str) -> Any: ...


class AccessChecker:
    """Decides, and remembers for ``ttl`` seconds, whether a principal holds an operation's
    actions at a scope. ``ttl`` 0 turns the cache off."""

    def __init__(
        self,
        authorizer: Authorizer,
        groups: GroupSource,
        network: NetworkLocator,
        subscription_id: str,
        ttl: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.authorizer = authorizer
        self.groups = groups
        self.network = network
        self.subscription_scope = f"/subscriptions/{subscription_id}"
        self.ttl = ttl
        self.clock = clock
        self._cache: dict[tuple[Any, ...], tuple[float, Any]] = {}
        self._guard = threading.Lock()

    def vm(self, vm_name: str, *, fresh: bool = False) -> VmTarget:
        """The VM's resource id and whether it has a public IP (cached like decisions)."""
        return self._cached(("vm", vm_name.lower()), fresh, lambda: self._locate(vm_name))

    def check(
        self, object_id: str, operation: Operation, vm: VmTarget | None, *, fresh: bool = False
    ) -> rbac.AccessDecision:
        """The decision for ``operation`` at ``vm`` (the subscription for ``CONFIGURE``)."""
        if operation is Operation.CONFIGURE or vm is None:
            scope, actions = self.subscription_scope, required_actions(operation)
        else:
            scope, actions = vm.resource_id, required_actions(operation, vm.has_public_ip)
        key = ("decision", object_id.lower(), scope.lower(), actions)
        return self._cached(key, fresh, lambda: self._decide(object_id, scope, actions, fresh))

    def require(
        self, object_id: str, operation: Operation, vm: VmTarget | None, *, fresh: bool = False
    ) -> rbac.AccessDecision:
        """Like ``check``, but raise AccessRefused when an action is missing."""
        decision = self.check(object_id, operation, vm, fresh=fresh)
        if not decision.allowed:
            raise AccessRefused(operation, decision)
        return decision

    def _decide(
        self, object_id: str, scope: str, actions: tuple[str, ...], fresh: bool
    ) -> rbac.AccessDecision:
        groups = self._cached(
            ("groups", object_id.lower()),
            fresh,
            lambda: self.groups.transitive_group_ids(object_id),
        )
        decision = self.authorizer.decide(scope, object_id, groups, actions, fresh=fresh)
        log.info(
            "RBAC for %s at %s: %s%s",
            object_id,
            scope,
            "allowed" if decision.allowed else "refused",
            "" if decision.allowed else f" (missing {len(decision.missing)} actions)",
        )
        return decision

    def _locate(self, vm_name: str) -> VmTarget:
        network = self.network.network_of(vm_name)
        return VmTarget(network.vm_name, network.vm_id, bool(network.public_ips))

    def _cached(self, key: tuple[Any, ...], fresh: bool, compute: Callable[[], Any]) -> Any:
        now = self.clock()
        if not fresh and self.ttl > 0:
            with self._guard:
                hit = self._cache.get(key)
            if hit is not None and now - hit[0] < self.ttl:
                return hit[1]
        value = compute()
        if self.ttl > 0:
            with self._guard:
                if len(self._cache) >= MAX_CACHE_ENTRIES:
                    self._prune(now)
                self._cache[key] = (now, value)
        return value

    def _prune(self, now: float) -> None:
        expired = [k for k, (at, _) in self._cache.items() if now - at >= self.ttl]
        for key in expired or list(self._cache)[: MAX_CACHE_ENTRIES // 2]:
            del self._cache[key]
