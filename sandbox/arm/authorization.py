"""Microsoft.Authorization (2022-04-01): role assignments, role definitions, deny assignments.

What jitbot reads to evaluate a user's Azure RBAC, in the shapes of
``authorization/RoleAssignments_ListForScope.json`` and ``RoleDefinitions_GetById.json``:

- ``GET {scope}/providers/Microsoft.Authorization/roleAssignments`` with ``$filter``
  ``atScope()`` (at or above the scope), ``assignedTo('{objectId}')`` (the user's own
  assignments and those of every group it belongs to, transitively, at, above or below
  the scope), ``principalId eq '{id}'`` (that principal only, at, above or below), or
  several joined by ``and``; without a filter, every assignment at, above or below.
  ``GET`` and ``DELETE`` of one assignment.
- ``GET {scope}/providers/Microsoft.Authorization/roleDefinitions/{id}`` (which also
  serves ``get_by_id``), and the list with ``$filter=roleName eq '…'`` or
  ``type eq 'BuiltInRole'|'CustomRole'``. Built-in roles are the real definitions in
  ``sandbox/seeds/builtin-roles.json``; custom roles come from the seed and are found only
  at or below their assignable scopes.
- ``GET {scope}/providers/Microsoft.Authorization/denyAssignments`` with ``atScope()`` or
  ``principalId eq '{id}'``, and ``GET`` of one.

``{scope}`` is the tenant root (``/``), a management group the subscription belongs to
(seed key ``managementGroups``), the subscription, a resource group, or a resource of
the store (a VM, an NSG, ...). The seed keys are documented in ``sandbox/seeds/README.md``.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sandbox.arm import directory
from sandbox.arm.errors import ArmError, bad_request
from sandbox.arm.provider import Provider, Request, Response, Route
from sandbox.arm.state import Store, stable_guid

NAMESPACE = "Microsoft.Authorization"
API_VERSIONS = ("2022-04-01",)
ASSIGNMENT_TYPE = "Microsoft.Authorization/roleAssignments"
DEFINITION_TYPE = "Microsoft.Authorization/roleDefinitions"
DENY_TYPE = "Microsoft.Authorization/denyAssignments"
MANAGEMENT_GROUP_TYPE = "Microsoft.Management/managementGroups"
EVERYONE = "00000000-0000-0000-0000-000000000000"
BUILTIN_ROLES = Path(__file__).resolve().parents[1] / "seeds" / "builtin-roles.json"
SEED_TIME = "2026-01-05T09:00:00.0000000Z"

_PROVIDER_PATH = "/providers/microsoft.authorization/"
_ASSIGNED_TO = re.compile(r"assignedTo\(\s*'([^']*)'\s*\)", re.IGNORECASE)
_PRINCIPAL_EQ = re.compile(r"principalId\s+eq\s+'?([0-9a-fA-F-]+)'?", re.IGNORECASE)
_AT_SCOPE = re.compile(r"atScope\(\s*\)", re.IGNORECASE)
_ROLE_NAME_EQ = re.compile(r"roleName\s+eq\s+'((?:[^']|'')*)'", re.IGNORECASE)
_TYPE_EQ = re.compile(r"type\s+eq\s+'(BuiltInRole|CustomRole)'", re.IGNORECASE)
_DENY_NAME_EQ = re.compile(r"denyAssignmentName\s+eq\s+'((?:[^']|'')*)'", re.IGNORECASE)


# ---------------------------------------------------------------------------------- scopes


def scope_of(path: str) -> str:
    """The scope an authorization path hangs under: the part before its provider segment."""
    index = path.lower().rfind(_PROVIDER_PATH)
    return path[:index].rstrip("/") or "/"


def _segments(scope: str) -> list[str]:
    return [s.lower() for s in scope.strip("/").split("/") if s]


def _ancestry(store: Store, scope: str) -> list[list[str]]:
    """The scope's own segments plus those of the management groups above it, if any."""
    own = _segments(scope)
    groups = []
    if own[:1] == ["subscriptions"]:
        groups = [
            ["providers", "microsoft.management", "managementgroups", mg["name"].lower()]
            for mg in store.of_type(MANAGEMENT_GROUP_TYPE)
        ]
    return [own, *groups]


def at_or_above(store: Store, candidate: str, scope: str) -> bool:
    """Whether an assignment at ``candidate`` applies at ``scope`` (whole path segments)."""
    wanted = _segments(candidate)
    for path in _ancestry(store, scope):
        if path[: len(wanted)] == wanted:
            return True
    return False


def related(store: Store, candidate: str, scope: str) -> bool:
    """At, above or below: what a list without ``atScope()`` returns."""
    return at_or_above(store, candidate, scope) or at_or_above(store, scope, candidate)


def _check_scope_exists(request: Request, scope: str) -> None:
    segments = _segments(scope)
    if len(segments) > 4 and segments[2] == "resourcegroups" and request.store.get(scope) is None:
        parts = scope.strip("/").split("/")
        message = (
            f"The Resource '{parts[5]}/{'/'.join(parts[6:])}' under resource group "
            f"'{parts[3]}' was not found."
        )
        raise ArmError(404, "ResourceNotFound", message)
    if segments[:3] == ["providers", "microsoft.management", "managementgroups"]:
        if not any(
            mg["name"].lower() == segments[3] for mg in request.store.of_type(MANAGEMENT_GROUP_TYPE)
        ):
            raise ArmError(404, "ManagementGroupNotFound", f"'{segments[3]}' not found.")


def _definition_id(store: Store, scope: str, guid: str) -> str:
    """Role definition ids carry the subscription when read at or below one."""
    if _segments(scope)[:1] == ["subscriptions"]:
        return (
            f"/subscriptions/{store.subscription_id}/providers/{NAMESPACE}/roleDefinitions/{guid}"
        )
    return f"/providers/{NAMESPACE}/roleDefinitions/{guid}"


def _extension_id(scope: str, kind: str, name: str) -> str:
    prefix = "" if scope == "/" else scope.rstrip("/")
    return f"{prefix}/providers/{NAMESPACE}/{kind}/{name}"


# ---------------------------------------------------------------------------------- filters


def _clauses(request: Request) -> list[str]:
    text = request.query.get("$filter", "").strip()
    if not text:
        return []
    return [c.strip() for c in re.split(r"\s+and\s+", text, flags=re.IGNORECASE)]


def _unsupported(request: Request) -> ArmError:
    message = f"The filter '{request.query.get('$filter', '')}' is not supported."
    return bad_request("UnsupportedFilter", message)


def _principal_filter(request: Request, clause: str) -> set[str] | None:
    """The principal ids a filter clause admits, or None when it is not a principal clause."""
    assigned = _ASSIGNED_TO.fullmatch(clause)
    if assigned is not None:
        user = assigned[1].lower()
        groups = directory.transitive_groups(request.store, user)
        return {user, *(g["objectId"].lower() for g in groups)}
    principal = _PRINCIPAL_EQ.fullmatch(clause)
    if principal is not None:
        return {principal[1].lower()}
    return None


# ------------------------------------------------------------------------------ role assignments


def render_assignment(store: Store, record: Mapping[str, Any]) -> dict[str, Any]:
    properties = {
        "roleDefinitionId": _definition_id(store, record["scope"], record["roleGuid"]),
        "principalId": record["principalId"],
        "principalType": record["principalType"],
        "scope": record["scope"],
        "condition": record.get("condition"),
        "conditionVersion": record.get("conditionVersion"),
        "createdOn": SEED_TIME,
        "updatedOn": SEED_TIME,
        "createdBy": None,
        "updatedBy": None,
        "delegatedManagedIdentityResourceId": None,
        "description": record.get("description"),
    }
    return {
        "properties": properties,
        "id": record["id"],
        "type": ASSIGNMENT_TYPE,
        "name": record["name"],
    }


def list_assignments(request: Request) -> Response:
    scope = scope_of(request.path)
    _check_scope_exists(request, scope)
    principals: set[str] | None = None
    at_scope = False
    for clause in _clauses(request):
        if _AT_SCOPE.fullmatch(clause):
            at_scope = True
            continue
        admitted = _principal_filter(request, clause)
        if admitted is None:
            raise _unsupported(request)
        principals = admitted if principals is None else principals & admitted
    applies = at_or_above if at_scope else related
    value = [
        render_assignment(request.store, record)
        for record in request.store.of_type(ASSIGNMENT_TYPE)
        if applies(request.store, record["scope"], scope)
        and (principals is None or record["principalId"].lower() in principals)
    ]
    return Response(200, {"value": value})


def _assignment(request: Request) -> tuple[str, dict[str, Any] | None]:
    scope = scope_of(request.path)
    assignment_id = _extension_id(scope, "roleAssignments", request.params["roleAssignmentName"])
    return assignment_id, request.store.get(assignment_id)


def get_assignment(request: Request) -> Response:
    assignment_id, record = _assignment(request)
    if record is None:
        raise ArmError(
            404, "RoleAssignmentNotFound", f"The role assignment '{assignment_id}' is not found."
        )
    return Response(200, render_assignment(request.store, record))


def delete_assignment(request: Request) -> Response:
    """RoleAssignments_Delete: 200 with the deleted assignment, 204 when there was none."""
    assignment_id, record = _assignment(request)
    if record is None:
        return Response(204)
    request.store.delete(assignment_id)
    return Response(200, render_assignment(request.store, record))


# ------------------------------------------------------------------------------ role definitions


def render_definition(store: Store, scope: str, record: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "properties": json.loads(json.dumps(record["properties"])),
        "id": _definition_id(store, scope, record["name"]),
        "type": DEFINITION_TYPE,
        "name": record["name"],
    }


def _definitions_at(store: Store, scope: str) -> list[dict[str, Any]]:
    """Built-in roles everywhere; a custom role at or below one of its assignable scopes."""
    found = []
    for record in store.of_type(DEFINITION_TYPE):
        assignable = record["properties"].get("assignableScopes") or ["/"]
        if record["builtIn"] or any(at_or_above(store, a, scope) for a in assignable):
            found.append(record)
    return found


def get_definition(request: Request) -> Response:
    scope = scope_of(request.path)
    guid = request.params["roleDefinitionId"].lower()
    for record in _definitions_at(request.store, scope):
        if record["name"].lower() == guid:
            return Response(200, render_definition(request.store, scope, record))
    message = f"The specified role definition with ID '{request.params['roleDefinitionId']}' "
    raise ArmError(404, "RoleDefinitionDoesNotExist", message + "does not exist.")


def list_definitions(request: Request) -> Response:
    scope = scope_of(request.path)
    _check_scope_exists(request, scope)
    records = _definitions_at(request.store, scope)
    for clause in _clauses(request):
        by_name = _ROLE_NAME_EQ.fullmatch(clause)
        by_type = _TYPE_EQ.fullmatch(clause)
        if by_name is not None:
            name = by_name[1].replace("''", "'").lower()
            records = [r for r in records if r["properties"]["roleName"].lower() == name]
        elif by_type is not None:
            kind = by_type[1].lower()
            records = [r for r in records if r["properties"]["type"].lower() == kind]
        else:
            raise _unsupported(request)
    value = [render_definition(request.store, scope, r) for r in records]
    return Response(200, {"value": value})


# ------------------------------------------------------------------------------ deny assignments


def render_deny(record: Mapping[str, Any]) -> dict[str, Any]:
    properties = {
        "denyAssignmentName": record["denyAssignmentName"],
        "description": record.get("description", ""),
        "permissions": json.loads(json.dumps(record["permissions"])),
        "scope": record["scope"],
        "doNotApplyToChildScopes": record["doNotApplyToChildScopes"],
        "principals": [dict(p) for p in record["principals"]],
        "excludePrincipals": [dict(p) for p in record["excludePrincipals"]],
        "isSystemProtected": True,
    }
    return {"id": record["id"], "name": record["name"], "type": DENY_TYPE, "properties": properties}


def list_deny_assignments(request: Request) -> Response:
    scope = scope_of(request.path)
    _check_scope_exists(request, scope)
    records = list(request.store.of_type(DENY_TYPE))
    applies = related
    for clause in _clauses(request):
        principal = _PRINCIPAL_EQ.fullmatch(clause)
        by_name = _DENY_NAME_EQ.fullmatch(clause)
        if _AT_SCOPE.fullmatch(clause):
            applies = at_or_above
        elif principal is not None:
            wanted = principal[1].lower()
            records = [r for r in records if _deny_names(request.store, r, wanted)]
        elif by_name is not None:
            name = by_name[1].replace("''", "'").lower()
            records = [r for r in records if r["denyAssignmentName"].lower() == name]
        else:
            raise _unsupported(request)
    value = [render_deny(r) for r in records if applies(request.store, r["scope"], scope)]
    return Response(200, {"value": value})


def _deny_names(store: Store, record: Mapping[str, Any], principal: str) -> bool:
    """Whether a deny assignment names ``principal``, one of its groups, or everyone."""
    ids = {
        principal,
        *(g["objectId"].lower() for g in directory.transitive_groups(store, principal)),
    }
    named = {p["id"].lower() for p in record["principals"]}
    return EVERYONE in named or bool(ids & named)


def get_deny_assignment(request: Request) -> Response:
    scope = scope_of(request.path)
    deny_id = _extension_id(scope, "denyAssignments", request.params["denyAssignmentId"])
    record = request.store.get(deny_id)
    if record is None:
        raise ArmError(404, "DenyAssignmentNotFound", f"Deny assignment '{deny_id}' not found.")
    return Response(200, render_deny(record))


# ---------------------------------------------------------------------------------- seed


def load_root_seed(store: Store, seed: Mapping[str, Any]) -> None:
    """Read ``managementGroups``, ``directory``, ``roleDefinitions``, ``roleAssignments`` and
    ``denyAssignments`` from the top of the seed (see ``sandbox/seeds/README.md``)."""
    for name in seed.get("managementGroups", []):
        store.put(
            {
                "id": f"/providers/Microsoft.Management/managementGroups/{name}",
                "type": MANAGEMENT_GROUP_TYPE,
                "name": name,
            }
        )
    directory.load_seed(store, seed)
    for item in json.loads(BUILTIN_ROLES.read_text(encoding="utf-8")):
        _put_definition(store, item, built_in=True)
    for item in seed.get("roleDefinitions", []):
        _put_definition(store, item, built_in=False)
    for item in seed.get("roleAssignments", []):
        _seed_assignment(store, item)
    for item in seed.get("denyAssignments", []):
        _seed_deny(store, item)


def _put_definition(store: Store, item: Mapping[str, Any], *, built_in: bool) -> None:
    guid = str(uuid.UUID(item["name"]))
    properties = dict(item["properties"])
    properties.setdefault("type", "BuiltInRole" if built_in else "CustomRole")
    properties["assignableScopes"] = [
        seed_scope(store, s) for s in properties.get("assignableScopes", [])
    ]
    store.put(
        {
            "id": f"/providers/{NAMESPACE}/roleDefinitions/{guid}",
            "type": DEFINITION_TYPE,
            "name": guid,
            "builtIn": built_in,
            "properties": properties,
        }
    )


def seed_scope(store: Store, text: str) -> str:
    """A seed scope: absolute (``/``, ``/providers/…``, ``/subscriptions/…``) or relative to
    the subscription (``""``, ``resourceGroups/rg``, ``resourceGroups/rg/providers/…``)."""
    if text.startswith("/"):
        return text
    base = f"/subscriptions/{store.subscription_id}"
    return f"{base}/{text.strip('/')}" if text.strip("/") else base


def role_guid(store: Store, ref: str) -> str:
    """A role definition's GUID from its GUID or its roleName."""
    for record in store.of_type(DEFINITION_TYPE):
        if ref.lower() in (record["name"].lower(), record["properties"]["roleName"].lower()):
            return str(record["name"])
    raise ValueError(f"seed: no role definition named {ref!r}")


def _seed_assignment(store: Store, item: Mapping[str, Any]) -> None:
    scope = seed_scope(store, item.get("scope", ""))
    principal = directory.principal_id(store, item["principal"])
    guid = role_guid(store, item["role"])
    name = item.get("name") or stable_guid(f"{scope}|{principal}|{guid}", "roleAssignment")
    store.put(
        {
            "id": _extension_id(scope, "roleAssignments", name),
            "type": ASSIGNMENT_TYPE,
            "name": name,
            "scope": scope,
            "roleGuid": guid,
            "principalId": principal,
            "principalType": directory.principal_type(store, principal),
            "condition": item.get("condition"),
            "conditionVersion": item.get("conditionVersion"),
            "description": item.get("description"),
        }
    )


def _seed_deny(store: Store, item: Mapping[str, Any]) -> None:
    scope = seed_scope(store, item.get("scope", ""))
    name = item.get("name") or stable_guid(f"{scope}|{item['denyAssignmentName']}", "deny")
    store.put(
        {
            "id": _extension_id(scope, "denyAssignments", name),
            "type": DENY_TYPE,
            "name": name,
            "scope": scope,
            "denyAssignmentName": item["denyAssignmentName"],
            "description": item.get("description", ""),
            "permissions": [_permission(p) for p in item["permissions"]],
            "principals": [_deny_principal(store, p) for p in item["principals"]],
            "excludePrincipals": [
                _deny_principal(store, p) for p in item.get("excludePrincipals", [])
            ],
            "doNotApplyToChildScopes": bool(item.get("doNotApplyToChildScopes", False)),
        }
    )


def _permission(item: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "actions": list(item.get("actions", [])),
        "notActions": list(item.get("notActions", [])),
        "dataActions": list(item.get("dataActions", [])),
        "notDataActions": list(item.get("notDataActions", [])),
    }


def _deny_principal(store: Store, ref: str) -> dict[str, str]:
    if ref.lower() == "everyone":
        return {"id": EVERYONE, "type": "SystemDefined"}
    principal = directory.principal_id(store, ref)
    return {"id": principal, "type": directory.principal_type(store, principal)}


# ---------------------------------------------------------------------------------- routes

_SCOPES = (
    "",
    "/providers/Microsoft.Management/managementGroups/{managementGroupId}",
    "/subscriptions/{subscriptionId}",
    "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}",
    "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}"
    "/providers/{resourceProviderNamespace}/{resourceType}/{resourceName}",
    "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}"
    "/providers/{resourceProviderNamespace}/{parentType}/{parentName}/{resourceType}/{resourceName}",
)


def _routes() -> tuple[Route, ...]:
    routes: list[Route] = []
    for scope in _SCOPES:
        base = f"{scope}/providers/{NAMESPACE}"
        assignment = f"{base}/roleAssignments/{{roleAssignmentName}}"
        definition = f"{base}/roleDefinitions/{{roleDefinitionId}}"
        deny = f"{base}/denyAssignments/{{denyAssignmentId}}"
        routes += [
            Route(
                "GET", f"{base}/roleAssignments", list_assignments, API_VERSIONS, "roleAssignments"
            ),
            Route("GET", assignment, get_assignment, API_VERSIONS, "roleAssignments"),
            Route("DELETE", assignment, delete_assignment, API_VERSIONS, "roleAssignments"),
            Route(
                "GET", f"{base}/roleDefinitions", list_definitions, API_VERSIONS, "roleDefinitions"
            ),
            Route("GET", definition, get_definition, API_VERSIONS, "roleDefinitions"),
            Route(
                "GET",
                f"{base}/denyAssignments",
                list_deny_assignments,
                API_VERSIONS,
                "denyAssignments",
            ),
            Route("GET", deny, get_deny_assignment, API_VERSIONS, "denyAssignments"),
        ]
    return tuple(routes)


PROVIDER = Provider(
    namespace=NAMESPACE,
    routes=_routes(),
    api_versions=API_VERSIONS,
    load_root_seed=load_root_seed,
)
