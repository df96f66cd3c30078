"""Looking people up in Microsoft Entra ID through Microsoft Graph (v1.0).

Two reads, both allowed by the application permission ``User.Read.All``:

- a user by object id (``GET /v1.0/users/{id}``) or by address
  (``GET /v1.0/users?$filter=mail eq '…' or userPrincipalName eq '…'``);
- the ids of every group the user belongs to, directly or through nested groups
  (``GET /v1.0/users/{id}/transitiveMemberOf``, following ``@odata.nextLink``).

The base URL is configurable so the sandbox can serve Graph; the token is asked for the
scope ``https://graph.microsoft.com/.default`` whatever the base URL.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from azure.core import PipelineClient
from azure.core.credentials import TokenCredential
from azure.core.exceptions import AzureError
from azure.core.pipeline.policies import (
    BearerTokenCredentialPolicy,
    HeadersPolicy,
    RetryPolicy,
    UserAgentPolicy,
)
from azure.core.pipeline.transport import RequestsTransport
from azure.core.rest import HttpRequest, HttpResponse

from jitcore.errors import CloudError

log = logging.getLogger(__name__)

GRAPH_URL = "https://graph.microsoft.com"
GRAPH_SCOPE = "https://graph.microsoft.com/.default"
USER_FIELDS = "id,userPrincipalName,mail,displayName,accountEnabled"
GROUP_TYPE = "#microsoft.graph.group"
MAX_PAGES = 50


@dataclass(frozen=True)
class DirectoryUser:
    object_id: str
    user_principal_name: str
    mail: str | None
    display_name: str
    account_enabled: bool

    @classmethod
    def from_graph(cls, data: dict[str, Any]) -> DirectoryUser:
        return cls(
            object_id=str(data["id"]),
            user_principal_name=str(data.get("userPrincipalName") or ""),
            mail=data.get("mail"),
            display_name=str(data.get("displayName") or ""),
            account_enabled=data.get("accountEnabled") is not False,
        )


class AmbiguousUser(CloudError):
    """More than one directory user answers to the same address."""


class GraphDirectory:
    """Users and their group memberships, read from Microsoft Graph."""

    def __init__(
        self,
        credential: TokenCredential,
        base_url: str = GRAPH_URL,
        ca_bundle: str | None = None,
        retry_total: int = 3,
    ) -> None:
        transport = RequestsTransport(connection_verify=ca_bundle or True)
        policies = [
            HeadersPolicy({"Accept": "application/json"}),
            UserAgentPolicy(sdk_moniker="jitbot-graph"),
            RetryPolicy(retry_total=retry_total, retry_backoff_factor=0.2),
            BearerTokenCredentialPolicy(credential, GRAPH_SCOPE),
        ]
        self._base = base_url.rstrip("/")
        self._client: PipelineClient[HttpRequest, HttpResponse] = PipelineClient(
            self._base, policies=policies, transport=transport
        )

    def close(self) -> None:
        self._client.close()

    def find_user(self, key: str) -> DirectoryUser | None:
        """A user by object id, or by ``mail`` or ``userPrincipalName`` (Graph ignores case).

        Raises:
            AmbiguousUser: several users answer to ``key``; none is picked.
            CloudError: Graph refused or failed.
        """
        if _is_guid(key):
            found = self._get(f"/v1.0/users/{quote(key)}?$select={USER_FIELDS}", missing_ok=True)
            return DirectoryUser.from_graph(found) if found is not None else None
        literal = key.replace("'", "''")
        query = f"mail eq '{literal}' or userPrincipalName eq '{literal}'"
        page = self._get(f"/v1.0/users?$filter={quote(query)}&$select={USER_FIELDS}")
        assert page is not None
        users = [DirectoryUser.from_graph(item) for item in page.get("value", [])]
        if len(users) > 1:
            raise AmbiguousUser(f"{len(users)} directory users answer to {key}", code="Ambiguous")
        return users[0] if users else None

    def transitive_group_ids(self, object_id: str) -> tuple[str, ...]:
        """The ids of every group ``object_id`` belongs to, directly or through nesting."""
        url: str | None = f"/v1.0/users/{quote(str(uuid.UUID(object_id)))}/transitiveMemberOf"
        ids: list[str] = []
        for _ in range(MAX_PAGES):
            if url is None:
                return tuple(ids)
            page = self._get(url)
            assert page is not None
            ids += [
                str(item["id"])
                for item in page.get("value", [])
                if item.get("@odata.type") == GROUP_TYPE
            ]
            url = page.get("@odata.nextLink")
        raise CloudError(f"more than {MAX_PAGES} pages of group memberships for {object_id}")

    def _get(self, path_or_url: str, missing_ok: bool = False) -> dict[str, Any] | None:
        url = path_or_url if path_or_url.startswith("http") else self._base + path_or_url
        if not url.startswith(self._base + "/"):
            raise CloudError(f"Microsoft Graph sent a link outside {self._base}; not followed")
        try:
            response = self._client.send_request(HttpRequest("GET", url))
        except AzureError as exc:
            raise CloudError(f"Microsoft Graph did not answer: {type(exc).__name__}") from exc
        if response.status_code == 404 and missing_ok:
            return None
        if response.status_code != 200:
            raise _graph_error(response)
        body = response.json()
        if not isinstance(body, dict):
            raise CloudError("Microsoft Graph answered with something other than an object")
        return body


def _graph_error(response: HttpResponse) -> CloudError:
    code: str | None = None
    message = response.reason or ""
    try:
        error = response.json().get("error") or {}
        code = error.get("code")
        message = error.get("message") or message
    except (ValueError, AttributeError):
        pass
    return CloudError(
        f"Microsoft Graph refused: {code or response.status_code}: {message}",
        code=code,
        status=response.status_code,
    )


def _is_guid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return len(text) == 36
