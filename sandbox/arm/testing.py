"""Helpers for pointing the real Azure SDK clients at an :class:`~sandbox.arm.server.ArmServer`.

The credential never talks to Entra ID: it hands out the stand-in's static token. The clients
are built with ``base_url=arm.url`` and ``connection_verify=arm.ca_path``, so no request can
reach management.azure.com. Azure SDK imports stay inside the functions: the server itself
does not need them.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from azure.core.credentials import AccessToken, AccessTokenInfo, TokenRequestOptions
    from azure.mgmt.compute import ComputeManagementClient
    from azure.mgmt.network import NetworkManagementClient
    from azure.mgmt.security import SecurityCenter

    from sandbox.arm.server import ArmServer

TOKEN_LIFETIME = 10 * 365 * 24 * 3600


class StaticTokenCredential:
    """A TokenCredential (and SupportsTokenInfo) that returns one fixed token."""

    def __init__(self, token: str = "sandbox-token") -> None:
        self.token = token
        self.expires_on = int(time.time()) + TOKEN_LIFETIME

    def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        from azure.core.credentials import AccessToken

        return AccessToken(self.token, self.expires_on)

    def get_token_info(
        self, *scopes: str, options: TokenRequestOptions | None = None
    ) -> AccessTokenInfo:
        from azure.core.credentials import AccessTokenInfo

        return AccessTokenInfo(self.token, self.expires_on)

    def close(self) -> None:
        """Nothing to release; present because some SDK code closes credentials."""


def client_options(arm: ArmServer, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments that aim an ARM SDK client at the stand-in and poll without waiting."""
    options: dict[str, Any] = {
        "base_url": arm.url,
        "connection_verify": arm.ca_path,
        "polling_interval": 0,
        # Proxy variables of the environment must not route 127.0.0.1 elsewhere.
        "use_env_settings": False,
    }
    options.update(overrides)
    return options


def network_client(
    arm: ArmServer, token: str = "sandbox-token", **overrides: Any
) -> NetworkManagementClient:
    from azure.mgmt.network import NetworkManagementClient

    credential = StaticTokenCredential(token)
    return NetworkManagementClient(
        credential, arm.subscription_id, **client_options(arm, **overrides)
    )


def compute_client(
    arm: ArmServer, token: str = "sandbox-token", **overrides: Any
) -> ComputeManagementClient:
    from azure.mgmt.compute import ComputeManagementClient

    credential = StaticTokenCredential(token)
    return ComputeManagementClient(
        credential, arm.subscription_id, **client_options(arm, **overrides)
    )


def security_client(
    arm: ArmServer, token: str = "sandbox-token", **overrides: Any
) -> SecurityCenter:
    """Defender for Cloud's client (JIT policies at 2020-01-01, pricings at 2024-01-01)."""
    from azure.mgmt.security import SecurityCenter

    credential = StaticTokenCredential(token)
    return SecurityCenter(credential, arm.subscription_id, **client_options(arm, **overrides))


def http_session(arm: ArmServer, token: str | None = "sandbox-token") -> Any:
    """A ``requests.Session`` that trusts the stand-in's CA and sends the bearer token, for
    checks of raw status codes, headers and JSON that the SDK models hide."""
    import requests

    session = requests.Session()
    # Without this, REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE in the environment replace ``verify``
    # and proxy variables could route 127.0.0.1 elsewhere.
    session.trust_env = False
    session.verify = arm.ca_path
    if token is not None:
        session.headers["Authorization"] = f"Bearer {token}"
    return session
