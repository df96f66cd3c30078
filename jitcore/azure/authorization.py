"""Reading a principal's Azure RBAC at one scope, for ``jitcore.rbac.evaluate`` to decide.

Three reads through azure-mgmt-authorization, api-version 2022-04-01:

- role assignments at the scope with ``$filter=assignedTo('{objectId}')``: the user's own
  and those of every group it belongs to, transitively, at, above and below the scope
  (``evaluate`` keeps those that reach the scope);
- the role definition of each, by id, kept for ``definition_ttl`` seconds;
- deny assignments with ``$filter=atScope()``: those at or above the scope.

Within one approval click, several checks at the same VM share (through
``jitcore.access.ClickReads``) the reads that are the same for all of them: the deny
assignments at the scope and each role definition, read once at the click.

An assignment or deny assignment returned for this scope at a management group can only
sit above it (nothing below a subscription is a management group), so the management
groups named there are passed to ``evaluate`` as the scope's ancestors.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from jitcore import rbac
from jitcore.access import ClickReads
from jitcore.azure.clients import AzureTarget, cloud_error

log = logging.getLogger(__name__)

AUTHORIZATION_API_VERSION = "2022-04-01"
_MANAGEMENT_GROUP_PREFIX = ("providers", "microsoft.management", "managementgroups")


def authorization_client(target: AzureTarget) -> Any:
    from azure.mgmt.authorization import AuthorizationManagementClient

    return AuthorizationManagementClient(
        target.credential,
        target.subscription_id,
        api_version=AUTHORIZATION_API_VERSION,
        **target.kwargs(),
    )


class AuthorizationGateway:
    """Role assignments, role definitions and deny assignments of one subscription."""

    def __init__(
        self,
        target: AzureTarget,
        definition_ttl: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = authorization_client(target)
        self._definition_ttl = definition_ttl
        self._clock = clock
        self._definitions: dict[str, tuple[float, rbac.RoleDefinition]] = {}
        self._guard = threading.Lock()

    def close(self) -> None:
        self._client.close()

    def decide(
        self,
        resource_id: str,
        object_id: str,
        group_ids: Iterable[str],
        required_actions: Iterable[str],
        *,
        fresh: bool = False,
        shared: ClickReads | None = None,
    ) -> rbac.AccessDecision:
        """Whether ``object_id`` (a user, with its groups) holds the actions at ``resource_id``.

        ``fresh`` reads role definitions again instead of using the cached ones.
        ``shared`` makes the reads that do not depend on the principal (deny assignments
        at the scope, role definitions) once for every check of the same click.

        Raises:
            CloudError: Azure refused or failed a read; nothing is assumed granted.
        """
        assignments = self.assignments_for(object_id, resource_id)
        definitions = [
            self._definition_in(shared, a.role_definition_id, fresh)
            for a in _unique_definitions(assignments)
        ]
        if shared is None:
            denies = self.deny_assignments_at(resource_id)
        else:
            denies = shared.get(
                ("deny assignments", resource_id.lower()),
                lambda: self.deny_assignments_at(resource_id),
            )
        groups = _management_groups([a.scope for a in assignments] + [d.scope for d in denies])
        return rbac.evaluate(
            resource_id,
            [object_id, *group_ids],
            assignments,
            [d for d in definitions if d is not None],
            denies,
            required_actions,
            management_groups=groups,
        )

    def _definition_in(
        self, shared: ClickReads | None, role_definition_id: str, fresh: bool
    ) -> rbac.RoleDefinition | None:
        if shared is None:
            return self.definition(role_definition_id, fresh=fresh)
        guid = role_definition_id.rstrip("/").rsplit("/", 1)[-1].lower()
        return shared.get(
            ("role definition", guid, fresh),
            lambda: self.definition(role_definition_id, fresh=fresh),
        )

    def assignments_for(self, object_id: str, scope: str) -> list[rbac.RoleAssignment]:
        principal = str(uuid.UUID(object_id))
        try:
            items = self._client.role_assignments.list_for_scope(
                scope.lstrip("/"), filter=f"assignedTo('{principal}')"
            )
            return [rbac.RoleAssignment.from_arm(_wire(item)) for item in items]
        except HttpResponseError as exc:
            raise cloud_error(exc, f"read the role assignments at {scope}") from exc

    def deny_assignments_at(self, scope: str) -> list[rbac.DenyAssignment]:
        try:
            items = self._client.deny_assignments.list_for_scope(
                scope.lstrip("/"), filter="atScope()"
            )
            return [rbac.DenyAssignment.from_arm(_wire(item)) for item in items]
        except HttpResponseError as exc:
            raise cloud_error(exc, f"read the deny assignments at {scope}") from exc

    def definition(
        self, role_definition_id: str, *, fresh: bool = False
    ) -> rbac.RoleDefinition | None:
        """A role definition by id, cached by GUID (the same in tenant and subscription form).

        None when Azure has no such definition any more (a deleted custom role can stay
        assigned): ``evaluate`` then counts nothing from that assignment.
        """
        guid = role_definition_id.rstrip("/").rsplit("/", 1)[-1].lower()
        now = self._clock()
        with self._guard:
            cached = self._definitions.get(guid)
        if cached is not None and not fresh and now - cached[0] < self._definition_ttl:
            return cached[1]
        try:
            item = self._client.role_definitions.get_by_id(role_definition_id)
        except ResourceNotFoundError:
            log.warning("role definition %s does not exist; its assignments grant nothing", guid)
            return None
        except HttpResponseError as exc:
            raise cloud_error(exc, f"read the role definition {role_definition_id}") from exc
        definition = rbac.RoleDefinition.from_arm(_wire(item))
        with self._guard:
            self._definitions[guid] = (now, definition)
        log.debug("role definition %s (%s) read", guid, definition.role_name)
        return definition


def _wire(model: Any) -> dict[str, Any]:
    """An SDK model as the ARM JSON it came from: camelCase names, ``properties`` nested."""
    return dict(model.serialize(keep_readonly=True))


def _unique_definitions(assignments: list[rbac.RoleAssignment]) -> list[rbac.RoleAssignment]:
    seen: set[str] = set()
    unique = []
    for assignment in assignments:
        if assignment.eligible or assignment.role_definition_guid in seen:
            continue
        seen.add(assignment.role_definition_guid)
        unique.append(assignment)
    return unique


def _management_groups(scopes: Iterable[str]) -> list[str]:
    names = []
    for scope in scopes:
        parts = scope.strip("/").lower().split("/")
        if len(parts) == 4 and tuple(parts[:3]) == _MANAGEMENT_GROUP_PREFIX:
            names.append(parts[3])
    return names
