"""Building the Azure SDK clients, pointed at Azure or at the sandbox stand-in.

Every client takes a base URL and a CA bundle so the sandbox can stand in for Azure
Resource Manager over HTTPS. The api-versions are pinned to the ones jitbot is tested
against, rather than whatever the installed SDK defaults to.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from azure.core.credentials import AccessToken, AccessTokenInfo, TokenCredential
from azure.core.exceptions import HttpResponseError

from jitcore.errors import CloudError

log = logging.getLogger(__name__)

NETWORK_API_VERSION = "2025-05-01"
COMPUTE_API_VERSION = "2025-11-01"
ARM_URL = "https://management.azure.com"


class StaticTokenCredential:
    """A credential that hands out one fixed token: for the sandbox, never for Azure.

    It exists so that sandbox mode never builds a DefaultAzureCredential, which would
    probe the instance metadata endpoint and other outside hosts.
    """

    def __init__(self, token: str) -> None:
        self._token = token

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(self._token, int(time.time()) + 3600)

    def get_token_info(self, *scopes: str, options: Any = None) -> AccessTokenInfo:
        return AccessTokenInfo(self._token, int(time.time()) + 3600)


@dataclass
class AzureTarget:
    """Where and how to reach Azure Resource Manager."""

    subscription_id: str
    credential: TokenCredential
    base_url: str = ARM_URL
    ca_bundle: str | None = None
    polling_interval: float = 5.0
    retry_total: int = 6
    client_kwargs: dict[str, Any] = field(default_factory=dict)

    def kwargs(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "base_url": self.base_url,
            "polling_interval": self.polling_interval,
            "retry_total": self.retry_total,
            "retry_backoff_factor": 0.2,
            "retry_backoff_max": 10,
            **self.client_kwargs,
        }
        if self.ca_bundle:
            options["connection_verify"] = self.ca_bundle
        return options


def default_credential() -> TokenCredential:
    """The production credential: managed identity, workload identity, environment or CLI."""
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential(exclude_interactive_browser_credential=True)


def network_client(target: AzureTarget) -> Any:
    from azure.mgmt.network import NetworkManagementClient

    return NetworkManagementClient(target.credential, target.subscription_id, **target.kwargs())


def compute_client(target: AzureTarget) -> Any:
    from azure.mgmt.compute import ComputeManagementClient

    return ComputeManagementClient(target.credential, target.subscription_id, **target.kwargs())


def as_json(model: Any) -> dict[str, Any]:
    """An SDK model as the plain ARM JSON it was read from (nested models included)."""
    return dict(model.as_dict()) if hasattr(model, "as_dict") else dict(model)


def cloud_error(exc: HttpResponseError, doing: str) -> CloudError:
    """Turn an SDK error into a CloudError carrying Azure's code and message."""
    code = getattr(getattr(exc, "error", None), "code", None)
    detail = getattr(getattr(exc, "error", None), "message", None) or exc.message or str(exc)
    status = exc.status_code
    text = f"Azure refused to {doing}: {code or status}: {detail}"
    return CloudError(text, code=code, status=status)


def parse_resource_id(resource_id: str) -> dict[str, str]:
    """Split an ARM id into its parts: subscription, resource group, provider, type, name.

    Child resources (``.../virtualNetworks/v/subnets/s``) keep their parent in
    ``parent`` and ``parent_type``.
    """
    parts = resource_id.strip("/").split("/")
    if (
        len(parts) < 8
        or parts[0].lower() != "subscriptions"
        or parts[2].lower() != "resourcegroups"
    ):
        raise ValueError(f"not an Azure resource id: {resource_id!r}")
    result = {
        "subscription": parts[1],
        "resource_group": parts[3],
        "provider": parts[5],
        "type": parts[6],
        "name": parts[7],
    }
    if len(parts) >= 10:
        result["parent_type"], result["parent"] = parts[6], parts[7]
        result["type"], result["name"] = parts[8], parts[9]
    return result
