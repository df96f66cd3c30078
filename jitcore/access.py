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

An approval click re-checks two principals (the approver and the requester) at the same
VM. ``check_fresh_together`` runs those checks at once, each reading Azure afresh, and
shares through a ``ClickReads`` the reads that are the same for both (the deny
assignments at the VM, a role definition both are assigned); the memo lives for that one
call only, so nothing read at an earlier click is ever reused.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from jitcore import rbac
from jitcore.errors import CloudError, NotAuthorized

log = logging.getLogger(__name__)

VIEW_ACTIONS: tuple[str, ...] = (rbac.JIT_POLICY_READ_ACTION,)
MAX_CACHE_ENTRIES = 5000
CLICK_CHECK_THREADS = 4
"""Threads that run the fresh checks of one approval click side by side."""


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


class ClickReads:
    """Reads made once for all the checks of one click, however many threads ask.

    The first caller of a key reads; callers of the same key meanwhile wait for that
    answer (or its error) instead of reading again. A new instance is made for each
    click and dropped after it, so an answer is never older than the click.
    """

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._keys: dict[Hashable, threading.Lock] = {}
        self._answers: dict[Hashable, tuple[bool, Any]] = {}

    def get(self, key: Hashable, read: Callable[[], Any]) -> Any:
        with self._guard:
            key_lock = self._keys.setdefault(key, threading.Lock())
        with key_lock:
            if key not in self._answers:
                try:
                    self._answers[key] = (True, read())
                except Exception as exc:
                    self._answers[key] = (False, exc)
            ok, answer = self._answers[key]
        if not ok:
            raise answer
        return answer


class Authorizer(Protocol):
    def decide(
        self,
        resource_id: str,
        object_id: str,
        group_ids: Iterable[str],
        required_actions: Iterable[str],
        *,
        fresh: bool = False,
        shared: ClickReads | None = None,
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
        self._pool: ThreadPoolExecutor | None = None

    def close(self) -> None:
        """Stop the threads of ``check_fresh_together`` (started at its first use)."""
        with self._guard:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)

    def vm(self, vm_name: str, *, fresh: bool = False) -> VmTarget:
        """The VM's resource id and whether it has a public IP (cached like decisions)."""
        return self._cached(("vm", vm_name.lower()), fresh, lambda: self._locate(vm_name))

    def locate_fresh(self, vm_name: str) -> tuple[VmTarget, Any]:
        """The VM read afresh: its RBAC target and the network it was read from, for a
        caller that goes on to use the network (an approval that opens access)."""
        network = self.network.network_of(vm_name)
        target = VmTarget(network.vm_name, network.vm_id, bool(network.public_ips))
        self._remember(("vm", vm_name.lower()), self.clock(), target)
        return target, network

    def check_fresh_together(
        self, checks: Sequence[tuple[str, Operation, VmTarget | None]]
    ) -> list[rbac.AccessDecision | CloudError]:
        """``check(..., fresh=True)`` for each (object id, operation, VM), run side by side.

        Each principal's groups and role assignments are read afresh; reads that are the
        same for several checks (deny assignments at one scope, a role definition) are
        made once for all of them. Each answer is a decision or the CloudError its
        reads failed with, in the order of ``checks``.
        """
        shared = ClickReads()
        pool = self._threads()
        futures = [
            pool.submit(self._check_fresh, object_id, operation, vm, shared)
            for object_id, operation, vm in checks
        ]
        return [future.result() for future in futures]

    def _check_fresh(
        self, object_id: str, operation: Operation, vm: VmTarget | None, shared: ClickReads
    ) -> rbac.AccessDecision | CloudError:
        scope, actions = self._scope_and_actions(operation, vm)
        try:
            decision = self._decide(object_id, scope, actions, True, shared)
        except CloudError as exc:
            return exc
        self._remember(
            ("decision", object_id.lower(), scope.lower(), actions), self.clock(), decision
        )
        return decision

    def _threads(self) -> ThreadPoolExecutor:
        with self._guard:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    CLICK_CHECK_THREADS, thread_name_prefix="jitbot-click-check"
                )
            return self._pool

    def _scope_and_actions(
        self, operation: Operation, vm: VmTarget | None
    ) -> tuple[str, tuple[str, ...]]:
        if operation is Operation.CONFIGURE or vm is None:
            return self.subscription_scope, required_actions(operation)
        return vm.resource_id, required_actions(operation, vm.has_public_ip)

    def check(
        self, object_id: str, operation: Operation, vm: VmTarget | None, *, fresh: bool = False
    ) -> rbac.AccessDecision:
        """The decision for ``operation`` at ``vm`` (the subscription for ``CONFIGURE``)."""
        scope, actions = self._scope_and_actions(operation, vm)
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
        self,
        object_id: str,
        scope: str,
        actions: tuple[str, ...],
        fresh: bool,
        shared: ClickReads | None = None,
    ) -> rbac.AccessDecision:
        groups = self._cached(
            ("groups", object_id.lower()),
            fresh,
            lambda: self.groups.transitive_group_ids(object_id),
        )
        if shared is None:
            decision = self.authorizer.decide(scope, object_id, groups, actions, fresh=fresh)
        else:
            decision = self.authorizer.decide(
                scope, object_id, groups, actions, fresh=fresh, shared=shared
            )
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
        self._remember(key, now, value)
        return value

    def _remember(self, key: tuple[Any, ...], now: float, value: Any) -> None:
        if self.ttl > 0:
            with self._guard:
                if len(self._cache) >= MAX_CACHE_ENTRIES:
                    self._prune(now)
                self._cache[key] = (now, value)

    def _prune(self, now: float) -> None:
        expired = [k for k, (at, _) in self._cache.items() if now - at >= self.ttl]
        for key in expired or list(self._cache)[: MAX_CACHE_ENTRIES // 2]:
            del self._cache[key]
