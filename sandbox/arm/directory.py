"""A minimal Microsoft Graph (v1.0) for the directory jitbot reads: users and their groups.

Served by the ARM stand-in on the same HTTPS port under ``/v1.0/`` (Graph has no
api-version and its own error shape, so it does not go through the ARM pipeline):

- ``GET /v1.0/users?$filter=mail eq '…' or userPrincipalName eq '…'`` (also ``id eq``),
  with ``$select`` and ``$top``; string comparisons ignore case, as Graph's do for these
  properties.
- ``GET /v1.0/users/{id | userPrincipalName}`` with ``$select``.
- ``GET /v1.0/users/{id | userPrincipalName}/transitiveMemberOf``: every group the user
  belongs to directly or through nested groups, as ``#microsoft.graph.group`` objects,
  paged by ``$top`` (default 100, at most 999) with ``@odata.nextLink``.

Errors use Graph's body, ``{"error": {"code", "message", "innerError"}}``: 401
``InvalidAuthenticationToken``, 404 ``Request_ResourceNotFound``, 400
``Request_UnsupportedQuery`` for a filter outside the forms above.

The directory comes from the seed's top-level ``directory`` key (see
``sandbox/seeds/README.md``) and is kept in the ARM store as records of the types below.
"""

from __future__ import annotations

import hmac
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, quote

from sandbox.arm.provider import Response
from sandbox.arm.state import Store

USER_TYPE = "Microsoft.Graph/users"
GROUP_TYPE = "Microsoft.Graph/groups"
DEFAULT_PAGE = 100
MAX_PAGE = 999

# What GET /users returns without $select (Graph's default property set).
_DEFAULT_USER_PROPERTIES = (
    "businessPhones",
    "displayName",
    "givenName",
    "jobTitle",
    "mail",
    "mobilePhone",
    "officeLocation",
    "preferredLanguage",
    "surname",
    "userPrincipalName",
    "id",
)
_FILTERABLE = {"mail": "mail", "userprincipalname": "userPrincipalName", "id": "id"}
_CLAUSE = re.compile(r"\s*(\w+)\s+eq\s+'((?:[^']|'')*)'\s*", re.IGNORECASE)


class GraphError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message

    def response(self) -> Response:
        inner = {"date": _now(), "request-id": str(uuid.uuid4())}
        body = {"error": {"code": self.code, "message": self.message, "innerError": inner}}
        return Response(self.status, body)


# ---------------------------------------------------------------------------------- seed


def load_seed(store: Store, seed: Mapping[str, Any]) -> None:
    """Read ``directory.users`` and ``directory.groups`` (members by id, UPN or group name)."""
    directory = seed.get("directory") or {}
    for item in directory.get("users", []):
        object_id = _guid(item["id"], "directory user")
        store.put(
            {
                "id": _user_key(object_id),
                "type": USER_TYPE,
                "objectId": object_id,
                "userPrincipalName": item["userPrincipalName"],
                "mail": item.get("mail"),
                "displayName": item.get("displayName", item["userPrincipalName"]),
                "accountEnabled": item.get("accountEnabled", True),
                "userType": item.get("userType", "Member"),
            }
        )
    groups = list(directory.get("groups", []))
    for item in groups:
        object_id = _guid(item["id"], "directory group")
        store.put(
            {
                "id": _group_key(object_id),
                "type": GROUP_TYPE,
                "objectId": object_id,
                "displayName": item["displayName"],
                "members": [],
            }
        )
    for item in groups:
        group = store.get(_group_key(item["id"]))
        assert group is not None
        group["members"] = [principal_id(store, ref) for ref in item.get("members", [])]


def principal_id(store: Store, ref: str) -> str:
    """The object id a seed reference names: an object id, a user's UPN or a group's name."""
    for record in (store.get(_user_key(ref)), store.get(_group_key(ref))):
        if record is not None:
            return str(record["objectId"])
    user = find_user(store, ref)
    if user is not None:
        return str(user["objectId"])
    for group in store.of_type(GROUP_TYPE):
        if group["displayName"].lower() == ref.lower():
            return str(group["objectId"])
    raise ValueError(f"seed: {ref!r} is no user or group of the seeded directory")


def principal_type(store: Store, object_id: str) -> str:
    if store.get(_group_key(object_id)) is not None:
        return "Group"
    return "User"


def find_user(store: Store, key: str) -> dict[str, Any] | None:
    """A user by object id or userPrincipalName (case-insensitive)."""
    found = store.get(_user_key(key))
    if found is not None:
        return found
    for user in store.of_type(USER_TYPE):
        if user["userPrincipalName"].lower() == key.lower():
            return user
    return None


def transitive_groups(store: Store, object_id: str) -> list[dict[str, Any]]:
    """Every group that has ``object_id`` as a member, directly or through nested groups."""
    found: dict[str, dict[str, Any]] = {}
    frontier = {object_id.lower()}
    while frontier:
        reached = {
            group["objectId"].lower(): group
            for group in store.of_type(GROUP_TYPE)
            if frontier & {member.lower() for member in group["members"]}
        }
        frontier = set(reached) - set(found)
        found.update(reached)
    return list(found.values())


def _user_key(object_id: str) -> str:
    return f"/v1.0/users/{object_id}"


def _group_key(object_id: str) -> str:
    return f"/v1.0/groups/{object_id}"


def _guid(value: str, what: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError as exc:
        raise ValueError(f"seed {what} id {value!r} is not a GUID") from exc


# ---------------------------------------------------------------------------------- HTTP


def handle(
    store: Store,
    method: str,
    path: str,
    query_string: str,
    headers: Mapping[str, str],
    token: str,
    base_url: str,
) -> Response:
    """Answer one Graph call; the caller holds the store lock."""
    try:
        _authenticate(headers, token)
        if method.upper() != "GET":
            message = "Specified HTTP method is not allowed for the request target."
            raise GraphError(405, "Request_BadRequest", message)
        query = {k.lower(): v for k, v in parse_qsl(query_string, keep_blank_values=True)}
        segments = [s for s in path.split("/") if s][1:]
        return _route(store, segments, query, base_url)
    except GraphError as exc:
        return exc.response()


def _route(store: Store, segments: list[str], query: dict[str, str], base_url: str) -> Response:
    if segments == ["users"]:
        return _list_users(store, query, base_url)
    if len(segments) == 2 and segments[0] == "users":
        return Response(200, _render_user(_require_user(store, segments[1]), query, base_url))
    if len(segments) == 3 and segments[0] == "users" and segments[2] == "transitiveMemberOf":
        return _member_of(store, _require_user(store, segments[1]), query, base_url)
    message = f"Resource not found for the segment '{segments[-1] if segments else ''}'."
    raise GraphError(400, "BadRequest", message)


def _authenticate(headers: Mapping[str, str], token: str) -> None:
    scheme, _, value = (headers.get("Authorization") or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise GraphError(401, "InvalidAuthenticationToken", "Access token is empty.")
    if not hmac.compare_digest(value.strip().encode(), token.encode()):
        raise GraphError(401, "InvalidAuthenticationToken", "Access token validation failure.")


def _require_user(store: Store, key: str) -> dict[str, Any]:
    user = find_user(store, key)
    if user is None:
        message = (
            f"Resource '{key}' does not exist or one of its queried reference-property "
            "objects are not present."
        )
        raise GraphError(404, "Request_ResourceNotFound", message)
    return user


def _list_users(store: Store, query: dict[str, str], base_url: str) -> Response:
    users = list(store.of_type(USER_TYPE))
    if "$filter" in query:
        clauses = _parse_filter(query["$filter"])
        users = [u for u in users if any(_matches(u, prop, value) for prop, value in clauses)]
    top = _page_size(query)
    value = [_render_user(u, query, None) for u in users[:top]]
    return Response(200, {"@odata.context": f"{base_url}/v1.0/$metadata#users", "value": value})


def _parse_filter(text: str) -> list[tuple[str, str]]:
    """``prop eq 'value'`` clauses joined by ``or``; anything else is unsupported."""
    clauses = []
    for part in re.split(r"\s+or\s+", text.strip(), flags=re.IGNORECASE):
        found = _CLAUSE.fullmatch(part)
        if found is None or found[1].lower() not in _FILTERABLE:
            raise GraphError(400, "Request_UnsupportedQuery", "Unsupported Query.")
        clauses.append((_FILTERABLE[found[1].lower()], found[2].replace("''", "'")))
    return clauses


def _matches(user: Mapping[str, Any], prop: str, value: str) -> bool:
    actual = user["objectId"] if prop == "id" else user.get(prop)
    return isinstance(actual, str) and actual.lower() == value.lower()


def _render_user(
    user: Mapping[str, Any], query: Mapping[str, str], base_url: str | None
) -> dict[str, Any]:
    full = {
        "businessPhones": [],
        "displayName": user["displayName"],
        "givenName": user["displayName"].split(" ")[0],
        "jobTitle": None,
        "mail": user["mail"],
        "mobilePhone": None,
        "officeLocation": None,
        "preferredLanguage": None,
        "surname": None,
        "userPrincipalName": user["userPrincipalName"],
        "id": user["objectId"],
        "accountEnabled": user["accountEnabled"],
        "userType": user["userType"],
    }
    selected = [s.strip() for s in query.get("$select", "").split(",") if s.strip()]
    names = selected or list(_DEFAULT_USER_PROPERTIES)
    body: dict[str, Any] = {}
    if base_url is not None:
        body["@odata.context"] = f"{base_url}/v1.0/$metadata#users/$entity"
    for name in names:
        key = next((k for k in full if k.lower() == name.lower()), None)
        if key is not None:
            body[key] = full[key]
    return body


def _member_of(
    store: Store, user: Mapping[str, Any], query: dict[str, str], base_url: str
) -> Response:
    groups = transitive_groups(store, user["objectId"])
    top = _page_size(query)
    skip = query.get("$skiptoken") or "0"
    start = int(skip) if skip.isdigit() else 0
    page = groups[start : start + top]
    body: dict[str, Any] = {
        "@odata.context": f"{base_url}/v1.0/$metadata#directoryObjects",
        "value": [
            {
                "@odata.type": "#microsoft.graph.group",
                "id": group["objectId"],
                "displayName": group["displayName"],
                "securityEnabled": True,
            }
            for group in page
        ],
    }
    if start + top < len(groups):
        path = f"/v1.0/users/{quote(user['objectId'])}/transitiveMemberOf"
        body["@odata.nextLink"] = f"{base_url}{path}?$top={top}&$skiptoken={start + top}"
    return Response(200, body)


def _page_size(query: Mapping[str, str]) -> int:
    text = query.get("$top")
    if text is None:
        return DEFAULT_PAGE
    if not text.isdigit() or not 1 <= int(text) <= MAX_PAGE:
        message = f"Invalid page size specified: '{text}'. Must be between 1 and {MAX_PAGE}."
        raise GraphError(400, "Request_BadRequest", message)
    return int(text)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")
