"""Azure RBAC evaluation for one principal at one resource, computed offline.

jitbot checks a requester's Azure permissions itself, from role assignments, role
definitions and deny assignments it has already fetched, so that a refusal can name the
exact actions that are missing and the roles and scopes that grant the others. Nothing
here does I/O: the adapters fetch, this module decides.

The rules follow Azure's documented evaluation (role-definitions.md, overview.md,
deny-assignments.md, scope-overview.md):

- A permission block grants an action when one of its ``actions`` matches it and none of
  the ``notActions`` of that same block does. ``notActions`` is not a deny: another block
  or another role may grant the action back. Data actions are a separate plane: ``*`` in
  ``actions`` never grants a data action.
- Patterns match case-insensitively, over the whole string, and ``*`` stands for any run
  of characters, ``/`` included, anywhere in the pattern.
- An assignment applies at its scope and every scope below it: root (``/``), the
  management groups above the subscription, the subscription, the resource group and the
  resource. Scopes compare by whole path segments, so ``rg1`` is not an ancestor of
  ``rg10``.
- Assignments to any group the principal belongs to count, as Azure's token carries the
  transitive group memberships.
- A deny assignment that applies beats every grant. It names its principals (the all-zero
  GUID is everyone), may exclude some, and may not apply to child scopes.

Where Azure's rules are silent or jitbot cannot evaluate something, this module fails
closed: a requirement is reported missing rather than guessed held. See
``requirement_alternatives`` for how the wildcard requirements of the Defender
documentation are read, and ``condition_constrains`` for which ABAC conditions are
understood.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, TypeVar

_T = TypeVar("_T")

EVERYONE_PRINCIPAL_ID = "00000000-0000-0000-0000-000000000000"
"""The principal id Azure uses in deny assignments to mean every principal."""

JIT_POLICY_READ_ACTION = "Microsoft.Security/locations/jitNetworkAccessPolicies/read"
JIT_POLICY_WRITE_ACTION = "Microsoft.Security/locations/jitNetworkAccessPolicies/write"
JIT_INITIATE_ACTION = "Microsoft.Security/locations/jitNetworkAccessPolicies/initiate/action"
VM_READ_ACTION = "Microsoft.Compute/virtualMachines/read"
VM_WRITE_ACTION = "Microsoft.Compute/virtualMachines/write"
PUBLIC_IP_READ_ACTION = "Microsoft.Network/publicIPAddresses/read"
"""Needed to request JIT access in addition to ``REQUEST_ACTIONS`` when the VM has a
public IP address (Defender for Cloud, just-in-time-access-usage.md, "Prerequisites")."""

REQUEST_ACTIONS: tuple[str, ...] = (
    JIT_INITIATE_ACTION,
    "Microsoft.Security/locations/jitNetworkAccessPolicies/*/read",
    VM_READ_ACTION,
    "Microsoft.Network/networkInterfaces/*/read",
)
"""What Defender's documentation lists for requesting JIT access to a VM without a public
IP address. The two ``*/read`` entries are read as described in
``requirement_alternatives``."""

CONFIGURE_ACTIONS: tuple[str, ...] = (JIT_POLICY_WRITE_ACTION, VM_WRITE_ACTION)
"""What Defender's documentation lists for configuring or editing a JIT policy."""

READ_ACTIONS: tuple[str, ...] = (
    JIT_POLICY_READ_ACTION,
    JIT_INITIATE_ACTION,
    "Microsoft.Security/policies/read",
    "Microsoft.Security/pricings/read",
    VM_READ_ACTION,
    "Microsoft.Network/*/read",
)
"""What Defender's documentation lists for reading JIT policies. It does include
``initiate/action``, so Reader, which the same page says can view JIT status, lacks one
action of this set."""


def request_actions(vm_has_public_ip: bool) -> tuple[str, ...]:
    """The actions needed to request JIT access to a VM.

    Defender asks for ``publicIPAddresses/read`` on top of ``REQUEST_ACTIONS`` only when
    the VM has a public IP address, so the requirement depends on the VM.
    """
    if vm_has_public_ip:
        return (*REQUEST_ACTIONS, PUBLIC_IP_READ_ACTION)
    return REQUEST_ACTIONS


# Matching


def _check_action(value: object, what: str) -> str:
    """Return ``value`` if it can be an action name or pattern, else raise ValueError.

    Azure action names have no whitespace; rejecting it catches values that were split
    or joined wrongly before they silently match nothing.
    """
    if not isinstance(value, str) or not value or any(c.isspace() for c in value):
        raise ValueError(f"{what} {value!r} is not an action name or pattern")
    return value


@lru_cache(maxsize=4096)
def _compiled(pattern: str) -> re.Pattern[str]:
    pieces = pattern.lower().split("*")
    return re.compile(".*".join(re.escape(piece) for piece in pieces), re.DOTALL)


def action_matches(pattern: str, action: str) -> bool:
    """Whether the role pattern ``pattern`` matches ``action``, as Azure matches them.

    Case-insensitive, anchored at both ends, ``*`` matching any run of characters
    (``/`` included). ``action`` may itself contain ``*``: a pattern's literal text never
    contains ``*``, so such a character can only be absorbed by a ``*`` of the pattern.
    That makes this also the test of whether ``pattern`` covers every action that the
    wildcard requirement ``action`` can name: ``Microsoft.Network/*/read`` covers
    ``Microsoft.Network/networkInterfaces/*/read``, ``Microsoft.Compute/virtualMachines/*/read``
    does not cover ``Microsoft.Compute/virtualMachines/read``.
    """
    _check_action(pattern, "pattern")
    _check_action(action, "action")
    return _compiled(pattern).fullmatch(action.lower()) is not None


@lru_cache(maxsize=4096)
def _overlap(a: str, b: str) -> bool:
    n, m = len(a), len(b)
    # reach[i][j]: some string is matched both by a[i:] and by b[j:].
    reach = [[False] * (m + 1) for _ in range(n + 1)]
    reach[n][m] = True
    for i in range(n, -1, -1):
        for j in range(m, -1, -1):
            if i == n and j == m:
                continue
            a_char = a[i] if i < n else None
            b_char = b[j] if j < m else None
            if a_char == "*":
                reach[i][j] = reach[i + 1][j] or (j < m and reach[i][j + 1])
            elif b_char == "*":
                reach[i][j] = reach[i][j + 1] or (i < n and reach[i + 1][j])
            else:
                reach[i][j] = a_char is not None and a_char == b_char and reach[i + 1][j + 1]
    return reach[0][0]


def patterns_overlap(a: str, b: str) -> bool:
    """Whether some action name matches both patterns (case-insensitive).

    With no ``*`` in ``b`` this is ``action_matches(a, b)``. It is what a ``notActions``
    entry or a deny must be checked with when the requirement is itself a pattern: a
    ``notActions`` entry that removes any part of the requirement means the block does
    not hold all of it.
    """
    _check_action(a, "pattern")
    _check_action(b, "pattern")
    return _overlap(a.lower(), b.lower())


_TYPE_READ_IDIOM = re.compile(r"(?P<type>[^*/]+(?:/[^*/]+)+)/\*/read", re.IGNORECASE)


def requirement_alternatives(requirement: str) -> tuple[str, ...]:
    """The forms of ``requirement`` any one of which, held, satisfies it.

    A requirement without ``*`` is one action and has only itself. A requirement with
    ``*`` (Defender's documentation writes ``.../jitNetworkAccessPolicies/*/read``,
    ``Microsoft.Network/networkInterfaces/*/read`` and ``Microsoft.Network/*/read``) is
    held when a role's pattern covers every action it can name, by Azure's own matching
    (see ``action_matches``): ``*``, ``*/read``, ``Microsoft.Network/*`` or the very
    same string all hold ``Microsoft.Network/*/read``; a list of concrete reads never
    does, however long.

    One documentation idiom needs more: ``<provider>/<type>/*/read`` (at least a provider
    and a resource type before ``/*/``) is also held by the concrete
    ``<provider>/<type>/read``. By Azure's matching the pattern does not include that
    action (it needs a segment between the type and ``read``), yet Microsoft's own
    least-privileged role for requesting JIT access (``Set-JitLeastPrivilegedRole.ps1``)
    grants exactly ``jitNetworkAccessPolicies/read`` for the documentation's
    ``jitNetworkAccessPolicies/*/read``, so the documentation plainly means "read the
    type". A provider-wide ``<provider>/*/read`` gets no such reading: ``<provider>/read``
    names no resource type.

    This is about reading requirement strings only. Role patterns keep Azure's rule, so
    ``Microsoft.Compute/virtualMachines/*/read`` in a role does not grant
    ``Microsoft.Compute/virtualMachines/read`` (the undocumented edge case is decided
    against the grant, which fails closed).
    """
    _check_action(requirement, "required action")
    idiom = _TYPE_READ_IDIOM.fullmatch(requirement)
    if idiom is None:
        return (requirement,)
    return (requirement, f"{idiom['type']}/read")


# ABAC conditions


_ACTION_MATCHES = re.compile(r"ActionMatches\s*\{\s*'([^']*)'\s*\}", re.IGNORECASE)
_OPENERS = {"(": ")", "{": "}", "[": "]"}


def _split_top_level(expr: str, operator: str) -> list[str] | None:
    """Split ``expr`` on ``operator`` (``and`` or ``or``) outside brackets and quotes.

    The symbolic spellings ``&&`` and ``||`` are split too. Returns None when brackets or
    quotes are unbalanced, which makes the whole condition not understood.
    """
    symbol = "&&" if operator == "and" else "||"
    parts: list[str] = []
    closers: list[str] = []
    quoted = False
    start = i = 0
    while i < len(expr):
        char = expr[i]
        if quoted:
            quoted = char != "'"
        elif char == "'":
            quoted = True
        elif char in _OPENERS:
            closers.append(_OPENERS[char])
        elif char in _OPENERS.values():
            if not closers or closers.pop() != char:
                return None
        elif not closers and expr.startswith(symbol, i):
            parts.append(expr[start:i])
            i += len(symbol)
            start = i
            continue
        elif not closers and _word_at(expr, i, operator):
            parts.append(expr[start:i])
            i += len(operator)
            start = i
            continue
        i += 1
    if quoted or closers:
        return None
    parts.append(expr[start:])
    return parts


def _word_at(expr: str, i: int, word: str) -> bool:
    end = i + len(word)
    if expr[i:end].lower() != word:
        return False
    before = expr[i - 1] if i > 0 else " "
    after = expr[end] if end < len(expr) else " "
    return not (before.isalnum() or before == "_" or after.isalnum() or after == "_")


def _strip_parens(expr: str) -> str:
    """Remove whitespace and any parentheses that enclose the whole of ``expr``."""
    expr = expr.strip()
    while expr.startswith("(") and _closing_index(expr) == len(expr) - 1:
        expr = expr[1:-1].strip()
    return expr


def _closing_index(expr: str) -> int:
    depth = 0
    quoted = False
    for i, char in enumerate(expr):
        if quoted:
            quoted = char != "'"
        elif char == "'":
            quoted = True
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return i
    return -1


def _guard_patterns(disjunct: str) -> tuple[str, ...] | None:
    """The actions of a ``!(ActionMatches{'a'} OR ActionMatches{'b'})`` disjunct.

    Returns None for anything else: only a negation of plain ``ActionMatches`` is
    understood as "the rest of this clause concerns those actions only".
    """
    disjunct = _strip_parens(disjunct)
    if disjunct.startswith("!"):
        inner = disjunct[1:]
    elif _word_at(disjunct, 0, "not"):
        inner = disjunct[3:]
    else:
        return None
    items = _split_top_level(_strip_parens(inner), "or")
    if items is None:
        return None
    patterns: list[str] = []
    for item in items:
        found = _ACTION_MATCHES.fullmatch(_strip_parens(item))
        if found is None or not found[1]:
            return None
        patterns.append(found[1])
    return tuple(patterns)


@lru_cache(maxsize=256)
def _parse_guards(condition: str) -> tuple[tuple[tuple[str, ...], ...], ...] | None:
    """Per top-level AND clause, the guards (ActionMatches lists) found among its ORs.

    None when the condition is not a conjunction of clauses that each have a guard.
    """
    clauses = _split_top_level(_strip_parens(condition), "and")
    if clauses is None:
        return None
    parsed: list[tuple[tuple[str, ...], ...]] = []
    for clause in clauses:
        disjuncts = _split_top_level(_strip_parens(clause), "or")
        if disjuncts is None:
            return None
        guards = tuple(g for g in map(_guard_patterns, disjuncts) if g is not None)
        if not guards:
            return None
        parsed.append(guards)
    return tuple(parsed)


def condition_constrains(condition: str | None, condition_version: str | None, action: str) -> bool:
    """Whether an ABAC condition may restrict ``action``, as far as jitbot can tell.

    jitbot has none of the request and resource attributes a condition tests, so it
    understands one form only: every top-level ``AND`` clause reads
    ``(!(ActionMatches{'x'})) OR (<anything>)``, where the negation may also list several
    ``ActionMatches`` joined by ``OR``, and ``NOT``, ``&&`` and ``||`` are accepted
    spellings. Such a clause is true for any action that no ``x`` matches, whatever
    ``<anything>`` says, so when no guarded action matches ``action`` the condition does
    not constrain it (Azure's constrained-delegation conditions on
    ``roleAssignments/write|delete`` are of this form). The answer is per action: the
    same condition can leave ``initiate/action`` free and constrain
    ``roleAssignments/write``. Every other condition, and any ``conditionVersion`` but
    2.0 (the default and the only one Azure accepts), is taken to constrain, so the
    grant is not counted.
    """
    if condition is None or not condition.strip():
        return False
    if condition_version not in (None, "", "2.0"):
        return True
    guards = _parse_guards(condition)
    if guards is None:
        return True
    return not all(
        any(not any(patterns_overlap(guarded, action) for guarded in guard) for guard in clause)
        for clause in guards
    )


# ARM shapes


def _mapping(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{what} must be a JSON object, got {value!r}")
    return value


def _properties(data: object, what: str) -> Mapping[str, Any]:
    """The ``properties`` object of an ARM resource, or the object itself when flattened.

    The REST API nests the fields under ``properties``; the CLI and the docs print them
    at the top level. Both carry the same camelCase names.
    """
    data = _mapping(data, what)
    if "properties" in data:
        return _mapping(data["properties"], f"{what} properties")
    return data


def _optional_str(value: object, what: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ValueError(f"{what} must be a string, got {value!r}")


def _required_str(value: object, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    return value


def _str_tuple(value: object, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ValueError(f"{what} must be a list of strings, got {value!r}")
    items = tuple(value)
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"{what} must be a list of strings, got item {item!r}")
    return items


def _last_segment(resource_id: str) -> str:
    return resource_id.rstrip("/").rsplit("/", 1)[-1]


def _scope_of(resource_id: str, what: str) -> str:
    """The scope an extension resource id hangs under (ARM puts it before
    ``/providers/Microsoft.Authorization/``), for payloads that omit ``scope``."""
    head, found, _ = resource_id.lower().partition("/providers/microsoft.authorization/")
    if not found:
        raise ValueError(f"{what} has no scope and its id {resource_id!r} names none")
    return resource_id[: len(head)] or "/"


def _check_scope(scope: str, what: str) -> str:
    if not scope.startswith("/") or "//" in scope:
        raise ValueError(f"{what} scope {scope!r} is not an Azure scope")
    return scope


@dataclass(frozen=True)
class Permission:
    """One permission block of a role definition or deny assignment.

    Lists may be passed as any iterable of strings; they are kept as tuples.
    """

    actions: tuple[str, ...] = ()
    not_actions: tuple[str, ...] = ()
    data_actions: tuple[str, ...] = ()
    not_data_actions: tuple[str, ...] = ()
    condition: str | None = None
    condition_version: str | None = None

    def __post_init__(self) -> None:
        for name in ("actions", "not_actions", "data_actions", "not_data_actions"):
            items = _str_tuple(getattr(self, name), name)
            for item in items:
                _check_action(item, name)
            object.__setattr__(self, name, items)
        _optional_str(self.condition, "condition")
        _optional_str(self.condition_version, "conditionVersion")

    @classmethod
    def from_arm(cls, data: Mapping[str, Any]) -> Permission:
        """Build from an ARM ``permissions[]`` item (missing or null arrays are empty)."""
        data = _mapping(data, "permission")
        return cls(
            actions=_str_tuple(data.get("actions"), "actions"),
            not_actions=_str_tuple(data.get("notActions"), "notActions"),
            data_actions=_str_tuple(data.get("dataActions"), "dataActions"),
            not_data_actions=_str_tuple(data.get("notDataActions"), "notDataActions"),
            condition=_optional_str(data.get("condition"), "condition"),
            condition_version=_optional_str(data.get("conditionVersion"), "conditionVersion"),
        )

    def _lists(self, data: bool) -> tuple[tuple[str, ...], tuple[str, ...]]:
        if data:
            return self.data_actions, self.not_data_actions
        return self.actions, self.not_actions

    def grants(self, action: str, *, data: bool = False) -> bool:
        """Whether this block grants all of ``action`` (conditions not considered).

        An allow pattern must cover the action, and no exclusion may touch any part of
        it: for a wildcard requirement this is the conservative reading.
        """
        allow, exclude = self._lists(data)
        return any(action_matches(p, action) for p in allow) and not any(
            patterns_overlap(p, action) for p in exclude
        )

    def blocks(self, action: str, *, data: bool = False) -> bool:
        """Whether this block, in a deny assignment, denies any part of ``action``.

        The mirror of ``grants``: a deny touching any action the requirement names
        counts, unless one exclusion spares the whole requirement. Fails closed.
        """
        deny, exclude = self._lists(data)
        return any(patterns_overlap(p, action) for p in deny) and not any(
            action_matches(p, action) for p in exclude
        )


@dataclass(frozen=True)
class RoleDefinition:
    """A role definition. ``name`` is its GUID, the key assignments refer to it by."""

    id: str
    name: str
    role_name: str
    role_type: str | None = None
    permissions: tuple[Permission, ...] = ()
    assignable_scopes: tuple[str, ...] = ()
    description: str | None = None

    def __post_init__(self) -> None:
        _required_str(self.id, "role definition id")
        _required_str(self.name, "role definition name")
        _required_str(self.role_name, "roleName")
        if "/" in self.name:
            raise ValueError(f"role definition name {self.name!r} must be a GUID, not a path")
        if _last_segment(self.id).lower() != self.name.lower():
            raise ValueError(
                f"role definition id {self.id!r} does not end with its name {self.name!r}"
            )
        permissions = tuple(self.permissions)
        for permission in permissions:
            if not isinstance(permission, Permission):
                raise ValueError(f"permissions must be Permission objects, got {permission!r}")
        object.__setattr__(self, "permissions", permissions)
        scopes = _str_tuple(self.assignable_scopes, "assignableScopes")
        object.__setattr__(self, "assignable_scopes", scopes)

    @property
    def guid(self) -> str:
        """The lower-cased GUID, the same in the tenant and subscription forms of the id."""
        return self.name.lower()

    @classmethod
    def from_arm(cls, data: Mapping[str, Any]) -> RoleDefinition:
        """Build from a 2022-04-01 ``roleDefinitions`` item or a role file entry.

        ``properties.type`` is the role type (``BuiltInRole``, ``CustomRole``); the
        top-level ``type`` is the ARM resource type. A flattened (CLI) entry carries the
        role type as ``roleType``.
        """
        data = _mapping(data, "role definition")
        props = _properties(data, "role definition")
        raw_id = _optional_str(data.get("id"), "role definition id")
        raw_name = _optional_str(data.get("name"), "role definition name")
        if not raw_id and not raw_name:
            raise ValueError(f"role definition has neither id nor name: {dict(data)!r}")
        name = raw_name or _last_segment(raw_id or "")
        role_id = raw_id or f"/providers/Microsoft.Authorization/roleDefinitions/{name}"
        nested = "properties" in data
        role_type = props.get("type") if nested else props.get("roleType")
        raw_permissions = props.get("permissions")
        raw_permissions = [] if raw_permissions is None else raw_permissions
        if not isinstance(raw_permissions, list):
            raise ValueError(f"permissions must be a list, got {raw_permissions!r}")
        return cls(
            id=role_id,
            name=name,
            role_name=_required_str(props.get("roleName"), "roleName"),
            role_type=_optional_str(role_type, "role type"),
            permissions=tuple(Permission.from_arm(p) for p in raw_permissions),
            assignable_scopes=_str_tuple(props.get("assignableScopes"), "assignableScopes"),
            description=_optional_str(props.get("description"), "description"),
        )

    def grants(self, action: str, *, data: bool = False) -> bool:
        """Whether some block grants ``action``, ignoring conditions and scopes."""
        return any(p.grants(action, data=data) for p in self.permissions)


_ELIGIBILITY_TYPES = frozenset(
    {
        "microsoft.authorization/roleeligibilityschedules",
        "microsoft.authorization/roleeligibilityscheduleinstances",
        "microsoft.authorization/roleeligibilityschedulerequests",
    }
)


@dataclass(frozen=True)
class RoleAssignment:
    """A role given to a principal at a scope.

    ``eligible`` marks a PIM eligibility, which grants nothing until activated (an
    activation shows up as an ordinary assignment).
    """

    id: str
    scope: str
    role_definition_id: str
    principal_id: str
    principal_type: str | None = None
    condition: str | None = None
    condition_version: str | None = None
    eligible: bool = False

    def __post_init__(self) -> None:
        _required_str(self.id, "role assignment id")
        _check_scope(_required_str(self.scope, "role assignment scope"), "role assignment")
        _required_str(self.role_definition_id, "roleDefinitionId")
        _required_str(self.principal_id, "principalId")
        _optional_str(self.condition, "condition")
        _optional_str(self.condition_version, "conditionVersion")

    @property
    def role_definition_guid(self) -> str:
        """The GUID the role definition id ends with, lower-cased."""
        return _last_segment(self.role_definition_id).lower()

    @classmethod
    def from_arm(cls, data: Mapping[str, Any]) -> RoleAssignment:
        """Build from a 2022-04-01 ``roleAssignments`` item.

        ``scope`` is read-only in the API and always returned, but when absent it is
        taken from the id. Items of the PIM ``roleEligibilitySchedule*`` types are
        marked eligible.
        """
        data = _mapping(data, "role assignment")
        props = _properties(data, "role assignment")
        assignment_id = _required_str(data.get("id"), "role assignment id")
        scope = _optional_str(props.get("scope"), "role assignment scope")
        resource_type = _optional_str(data.get("type"), "role assignment type") or ""
        return cls(
            id=assignment_id,
            scope=scope or _scope_of(assignment_id, "role assignment"),
            role_definition_id=_required_str(props.get("roleDefinitionId"), "roleDefinitionId"),
            principal_id=_required_str(props.get("principalId"), "principalId"),
            principal_type=_optional_str(props.get("principalType"), "principalType"),
            condition=_optional_str(props.get("condition"), "condition"),
            condition_version=_optional_str(props.get("conditionVersion"), "conditionVersion"),
            eligible=resource_type.lower() in _ELIGIBILITY_TYPES,
        )


@dataclass(frozen=True)
class DenyAssignment:
    """Actions denied to principals at a scope, whatever their roles grant.

    ``principals`` may hold ``EVERYONE_PRINCIPAL_ID``. Exclusion wins over inclusion, and
    excluding a group excludes its members, as assignments to a group count for them.

    A ``condition`` on a deny assignment is not evaluated: the deny is applied as if the
    condition held, which can only refuse more.
    """

    id: str
    scope: str
    permissions: tuple[Permission, ...]
    principals: tuple[str, ...]
    exclude_principals: tuple[str, ...] = ()
    does_not_apply_to_child_scopes: bool = False
    name: str | None = None
    condition: str | None = None

    def __post_init__(self) -> None:
        _required_str(self.id, "deny assignment id")
        _check_scope(_required_str(self.scope, "deny assignment scope"), "deny assignment")
        permissions = tuple(self.permissions)
        for permission in permissions:
            if not isinstance(permission, Permission):
                raise ValueError(f"permissions must be Permission objects, got {permission!r}")
        object.__setattr__(self, "permissions", permissions)
        object.__setattr__(self, "principals", _str_tuple(self.principals, "principals"))
        excluded = _str_tuple(self.exclude_principals, "excludePrincipals")
        object.__setattr__(self, "exclude_principals", excluded)
        if not isinstance(self.does_not_apply_to_child_scopes, bool):
            raise ValueError(
                "doNotApplyToChildScopes must be true or false, "
                f"got {self.does_not_apply_to_child_scopes!r}"
            )

    @classmethod
    def from_arm(cls, data: Mapping[str, Any]) -> DenyAssignment:
        """Build from a 2022-04-01 ``denyAssignments`` item (principals as ``{id, type}``)."""
        data = _mapping(data, "deny assignment")
        props = _properties(data, "deny assignment")
        deny_id = _required_str(data.get("id"), "deny assignment id")
        scope = _optional_str(props.get("scope"), "deny assignment scope")
        raw_permissions = props.get("permissions")
        raw_permissions = [] if raw_permissions is None else raw_permissions
        if not isinstance(raw_permissions, list):
            raise ValueError(f"permissions must be a list, got {raw_permissions!r}")
        return cls(
            id=deny_id,
            scope=scope or _scope_of(deny_id, "deny assignment"),
            permissions=tuple(Permission.from_arm(p) for p in raw_permissions),
            principals=_principal_ids(props.get("principals"), "principals"),
            exclude_principals=_principal_ids(props.get("excludePrincipals"), "excludePrincipals"),
            does_not_apply_to_child_scopes=_flag(
                props.get("doNotApplyToChildScopes"), "doNotApplyToChildScopes"
            ),
            name=_optional_str(props.get("denyAssignmentName"), "denyAssignmentName"),
            condition=_optional_str(props.get("condition"), "condition"),
        )


def _flag(value: object, what: str) -> bool:
    """An optional JSON boolean; absent or null is false. A string such as "false" is
    refused rather than read as true."""
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ValueError(f"{what} must be true or false, got {value!r}")
    return value


def _principal_ids(value: object, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValueError(f"{what} must be a list, got {value!r}")
    return tuple(_required_str(_mapping(p, what).get("id"), f"{what} id") for p in value)


# Evaluation


@dataclass(frozen=True)
class AccessDecision:
    """The outcome of ``evaluate``, with what is needed to explain it.

    ``held`` and ``missing`` partition the required actions, in the order given.
    ``denied`` pairs each missing action with every applicable deny assignment that
    covers it, whether or not a role granted it, so a refusal can say that a role alone
    would not help. ``granted_by`` maps each required action some counted assignment
    grants, denied or not, to ``(role name, assignment scope)`` pairs.
    ``skipped_conditional`` lists assignments whose grant of a required action was not
    counted because of an ABAC condition (on the assignment or in the role), and
    ``unknown_definitions`` the role definition ids of applicable assignments whose
    definition was not supplied.
    """

    allowed: bool
    scope: str
    held: tuple[str, ...]
    missing: tuple[str, ...]
    denied: tuple[tuple[str, str], ...] = ()
    skipped_conditional: tuple[str, ...] = ()
    granted_by: dict[str, list[tuple[str, str]]] = field(default_factory=dict, hash=False)
    unknown_definitions: tuple[str, ...] = ()
    data_plane: bool = False


_MANAGEMENT_GROUP_PREFIX = ("providers", "microsoft.management", "managementgroups")


def _segments(scope: str, what: str) -> tuple[str, ...]:
    """Lower-cased path segments of a scope; ``/`` has none."""
    _check_scope(scope, what)
    trimmed = scope.strip("/")
    return tuple(trimmed.lower().split("/")) if trimmed else ()


@dataclass(frozen=True)
class _Target:
    segments: tuple[str, ...]
    management_groups: frozenset[str]

    def covered_by(self, scope: str, *, exactly: bool) -> bool:
        """Whether an assignment at ``scope`` reaches this resource.

        ``exactly`` is for deny assignments that do not apply to child scopes.
        """
        segments = _segments(scope, "assignment")
        if exactly:
            return segments == self.segments
        if len(segments) == 4 and segments[:3] == _MANAGEMENT_GROUP_PREFIX:
            return segments[3] in self.management_groups
        return self.segments[: len(segments)] == segments


def _target(resource_id: object, management_groups: Iterable[str]) -> _Target:
    text = _required_str(resource_id, "resource id")
    if not text.startswith("/") or "//" in text.rstrip("/"):
        raise ValueError(f"resource id {text!r} is not an Azure resource id")
    segments = tuple(text.strip("/").lower().split("/"))
    if len(segments) < 2 or segments[0] != "subscriptions":
        raise ValueError(f"resource id {text!r} is not under /subscriptions/<id>")
    if isinstance(management_groups, str):
        raise ValueError(f"management_groups must be a list of names, got {management_groups!r}")
    names: set[str] = set()
    for group in management_groups:
        group = _required_str(group, "management group")
        if "/" not in group:
            names.add(group.lower())
            continue
        parts = _segments(group, "management group")
        if len(parts) != 4 or parts[:3] != _MANAGEMENT_GROUP_PREFIX:
            raise ValueError(f"management group {group!r} is neither a name nor an id")
        names.add(parts[3])
    return _Target(segments, frozenset(names))


def _unique(values: Iterable[str], what: str) -> list[str]:
    """Validated strings, first spelling kept, duplicates (ignoring case) dropped."""
    if isinstance(values, str):
        raise ValueError(f"{what} must be a list, got the string {values!r}")
    seen: set[str] = set()
    kept: list[str] = []
    for value in values:
        value = _required_str(value, what)
        if value.lower() not in seen:
            seen.add(value.lower())
            kept.append(value)
    return kept


def _definitions_by_guid(
    definitions: Iterable[RoleDefinition] | Mapping[str, RoleDefinition],
) -> dict[str, RoleDefinition]:
    values = definitions.values() if isinstance(definitions, Mapping) else definitions
    by_guid: dict[str, RoleDefinition] = {}
    for definition in values:
        if not isinstance(definition, RoleDefinition):
            raise ValueError(f"definitions must be RoleDefinition objects, got {definition!r}")
        by_guid[definition.guid] = definition
    return by_guid


def _deny_reaches(deny: DenyAssignment, target: _Target, principals: frozenset[str]) -> bool:
    """Whether ``deny`` applies to this principal at this resource.

    Exclusion wins over inclusion, and, as for grants, a principal is any of the
    caller's ids: excluding a group the user is in excludes the user.
    """
    if not target.covered_by(deny.scope, exactly=deny.does_not_apply_to_child_scopes):
        return False
    if principals & {p.lower() for p in deny.exclude_principals}:
        return False
    included = {p.lower() for p in deny.principals}
    return EVERYONE_PRINCIPAL_ID in included or bool(principals & included)


def evaluate(
    resource_id: str,
    principal_ids: Iterable[str],
    assignments: Iterable[RoleAssignment],
    definitions: Iterable[RoleDefinition] | Mapping[str, RoleDefinition],
    deny_assignments: Iterable[DenyAssignment],
    required_actions: Iterable[str],
    management_groups: Iterable[str] = (),
    *,
    data_actions: bool = False,
) -> AccessDecision:
    """Decide whether a principal holds ``required_actions`` at ``resource_id``.

    Args:
        resource_id: the resource checked (a VM, usually); any scope at or below a
            subscription.
        principal_ids: the principal's object id and the ids of all groups it belongs
            to, transitively. Assignments to any of them count.
        assignments: role assignments, possibly including ones that do not apply here
            (other scopes, other principals, PIM eligibilities); those are ignored.
        definitions: role definitions, matched to assignments by GUID, whatever the
            form of the id (tenant or subscription).
        deny_assignments: deny assignments; those that apply override every grant.
        required_actions: the actions to check, e.g. ``request_actions(True)``. Entries
            with ``*`` are read as described in ``requirement_alternatives``.
        management_groups: names or ids of the management groups above the
            subscription, so that assignments made there apply.
        data_actions: check ``required_actions`` as data actions (``dataActions`` and
            ``notDataActions``) instead of control-plane actions.

    Raises:
        ValueError: an input is malformed; the message names the value.
    """
    target = _target(resource_id, management_groups)
    principals = frozenset(p.lower() for p in _unique(principal_ids, "principal id"))
    if not principals:
        raise ValueError("principal_ids is empty: pass the principal's object id")
    required = _unique(required_actions, "required action")
    if not required:
        raise ValueError("required_actions is empty: name at least one action")
    alternatives = {action: requirement_alternatives(action) for action in required}
    by_guid = _definitions_by_guid(definitions)

    granted: dict[str, set[str]] = {action: set() for action in required}
    granted_by: dict[str, list[tuple[str, str]]] = {}
    skipped: list[str] = []
    unknown: list[str] = []
    for assignment in assignments:
        if not isinstance(assignment, RoleAssignment):
            raise ValueError(f"assignments must be RoleAssignment objects, got {assignment!r}")
        if assignment.eligible or assignment.principal_id.lower() not in principals:
            continue
        if not target.covered_by(assignment.scope, exactly=False):
            continue
        definition = by_guid.get(assignment.role_definition_guid)
        if definition is None:
            _append_once(unknown, assignment.role_definition_id)
            continue
        for action in required:
            for form in alternatives[action]:
                if _counted_grant(assignment, definition, form, data_actions, skipped):
                    granted[action].add(form)
                    source = (definition.role_name, assignment.scope)
                    _append_once(granted_by.setdefault(action, []), source)

    blocked: dict[str, dict[str, list[str]]] = {action: {} for action in required}
    for deny in deny_assignments:
        if not isinstance(deny, DenyAssignment):
            raise ValueError(f"deny_assignments must be DenyAssignment objects, got {deny!r}")
        if not _deny_reaches(deny, target, principals):
            continue
        for action in required:
            for form in alternatives[action]:
                if any(p.blocks(form, data=data_actions) for p in deny.permissions):
                    _append_once(blocked[action].setdefault(form, []), deny.id)

    held = [a for a in required if any(f not in blocked[a] for f in granted[a])]
    missing = [a for a in required if a not in held]
    denied: list[tuple[str, str]] = []
    for action in missing:
        for form in alternatives[action]:
            for deny_id in blocked[action].get(form, ()):
                _append_once(denied, (action, deny_id))
    return AccessDecision(
        allowed=not missing,
        scope=resource_id,
        held=tuple(held),
        missing=tuple(missing),
        denied=tuple(denied),
        skipped_conditional=tuple(skipped),
        granted_by=granted_by,
        unknown_definitions=tuple(unknown),
        data_plane=data_actions,
    )


def _counted_grant(
    assignment: RoleAssignment,
    definition: RoleDefinition,
    action: str,
    data_actions: bool,
    skipped: list[str],
) -> bool:
    """Whether ``assignment`` grants ``action`` and no condition stands in the way.

    A grant held back by a condition records the assignment in ``skipped``.
    """
    for permission in definition.permissions:
        if not permission.grants(action, data=data_actions):
            continue
        if condition_constrains(
            assignment.condition, assignment.condition_version, action
        ) or condition_constrains(permission.condition, permission.condition_version, action):
            _append_once(skipped, assignment.id)
            continue
        return True
    return False


def _append_once(items: list[_T], item: _T) -> None:
    if item not in items:
        items.append(item)


__all__ = [
    "CONFIGURE_ACTIONS",
    "EVERYONE_PRINCIPAL_ID",
    "JIT_INITIATE_ACTION",
    "JIT_POLICY_READ_ACTION",
    "JIT_POLICY_WRITE_ACTION",
    "PUBLIC_IP_READ_ACTION",
    "READ_ACTIONS",
    "REQUEST_ACTIONS",
    "VM_READ_ACTION",
    "VM_WRITE_ACTION",
    "AccessDecision",
    "DenyAssignment",
    "Permission",
    "RoleAssignment",
    "RoleDefinition",
    "action_matches",
    "condition_constrains",
    "evaluate",
    "patterns_overlap",
    "request_actions",
    "requirement_alternatives",
]
