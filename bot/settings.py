"""Configuration, from environment variables (``JITBOT_*``), validated at start.

Errors name the setting by its environment variable. Secrets are ``SecretStr`` so they
never print by accident, and :func:`problems` never echoes a secret or the database URL
(it may hold a password).
"""

from __future__ import annotations

import ipaddress
import re
import uuid
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

ENV_PREFIX = "JITBOT_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DATABASE_BACKENDS = ("sqlite", "postgresql")
_CHANNEL_ID = re.compile(r"[CG][A-Z0-9]{2,30}")


class DatabaseSettings(BaseSettings):
    """Just the database: enough for tools that only read it, such as ``audit export``."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    database_url: str = Field(
        default="sqlite:///jitbot.db",
        validation_alias="DATABASE_URL",
        description="SQLAlchemy URL; sqlite:///file.db or postgresql://user@host/db",
    )

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        try:
            backend = make_url(value).get_backend_name()
        except ArgumentError:
            raise ValueError(
                "not a database URL; expected sqlite:///file.db or postgresql://user@host/db"
            ) from None
        if backend not in DATABASE_BACKENDS:
            raise ValueError(f"{backend} is not supported; use sqlite or postgresql")
        return value


class Settings(DatabaseSettings):
    policy_file: Path = Path("policies.yaml")

    slack_signing_secret: SecretStr
    slack_bot_token: SecretStr
    slack_api_url: str = "https://slack.com/api/"
    slack_app_token: SecretStr | None = Field(
        default=None,
        description="app-level token (xapp-...); when set the bot uses Socket Mode",
    )
    socket_ping_interval: float = Field(
        default=10.0,
        gt=0,
        description="Socket Mode: seconds between pings; a link silent for 4 of them is renewed",
    )
    host: str = "0.0.0.0"
    port: int = Field(default=3000, ge=0, le=65535)
    http_threads: int = Field(default=8, ge=1, le=64)

    azure_subscription_id: str
    azure_credential: Literal["default", "static"] = "default"
    azure_static_token: SecretStr | None = Field(default=None, validate_default=True)
    arm_url: str = "https://management.azure.com"
    arm_ca_bundle: Path | None = None
    arm_polling_interval: float = Field(default=5.0, ge=0)
    graph_url: str = Field(
        default="https://graph.microsoft.com",
        description="Microsoft Graph base URL; its CA is JITBOT_ARM_CA_BUNDLE when set",
    )
    rbac_cache_seconds: float = Field(default=300.0, ge=0)
    identity_cache_seconds: float = Field(default=3600.0, ge=0)

    sweep_interval_seconds: float = Field(default=30.0, gt=0)
    reconcile_interval_seconds: float = Field(default=300.0, gt=0)
    lease_seconds: float = Field(default=300.0, gt=0)
    pending_timeout_seconds: float = Field(default=3600.0, gt=0)
    expiry_warning_seconds: float = Field(
        default=600.0,
        ge=0,
        description="how long before its end a grant's requester is warned; 0: never",
    )
    public_url: str | None = Field(
        default=None,
        description="the bot's own https:// address, for one-time 'use my current IP' links",
    )
    my_ip_ttl: float = Field(
        default=300.0, ge=30, le=3600, description="seconds a 'use my current IP' link lasts"
    )
    trusted_proxies: str = Field(
        default="",
        description="comma-separated IPs/CIDRs of proxies whose X-Forwarded-For is believed",
    )
    cloud_ranges: str = Field(
        default="",
        description="comma-separated paths of Azure Service Tags, AWS ip-ranges.json or "
        "Google cloud.json files; sources inside them are flagged to approvers",
    )
    audit_channel: str | None = Field(
        default=None,
        description="channel id (C… or G…) that gets one line per request lifecycle event",
    )
    log_format: Literal["text", "json"] = "text"
    log_level: str = "INFO"
    metrics_token: SecretStr | None = None

    @field_validator("slack_bot_token")
    @classmethod
    def _bot_token(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().startswith("xoxb-"):
            raise ValueError("a bot token starts with xoxb- (OAuth & Permissions in the app)")
        return value

    @field_validator("slack_app_token")
    @classmethod
    def _app_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith("xapp-"):
            raise ValueError(
                "an app-level token starts with xapp- (Basic Information > App-Level Tokens, "
                "scope connections:write)"
            )
        return value

    @property
    def socket_mode(self) -> bool:
        """Whether Slack reaches the bot over Socket Mode rather than HTTP requests."""
        return self.slack_app_token is not None

    @field_validator("azure_subscription_id")
    @classmethod
    def _subscription_guid(cls, value: str) -> str:
        try:
            uuid.UUID(value)
        except ValueError:
            raise ValueError("a subscription id is a GUID like 00000000-0000-...") from None
        return value

    @field_validator("azure_static_token")
    @classmethod
    def _static_token(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if value is None and info.data.get("azure_credential") == "static":
            raise ValueError("required when JITBOT_AZURE_CREDENTIAL=static")
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if not value.startswith(("https://", "http://")):
            raise ValueError(
                "use the address people reach the bot at, like https://jit.example.com"
            )
        return value.rstrip("/")

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, value: str) -> str:
        for item in split_list(value):
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or CIDR") from None
        return value

    @field_validator("cloud_ranges")
    @classmethod
    def _range_files(cls, value: str) -> str:
        missing = [item for item in split_list(value) if not Path(item).is_file()]
        if missing:
            raise ValueError(f"no such file: {', '.join(missing)}")
        return value

    @field_validator("audit_channel")
    @classmethod
    def _audit_channel(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return None
        if not _CHANNEL_ID.fullmatch(value.strip()):
            raise ValueError("a channel id like C0123ABCD (channel details, at the bottom)")
        return value.strip()

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        if value.upper() not in LOG_LEVELS:
            raise ValueError(f"use one of {', '.join(LOG_LEVELS)}")
        return value.upper()


def split_list(value: str) -> list[str]:
    """The items of a comma-separated setting, blanks dropped."""
    return [item.strip() for item in value.split(",") if item.strip()]


def env_name(field: str) -> str:
    """The environment variable that sets ``field`` (a field name or its alias)."""
    for name, info in Settings.model_fields.items():
        if field in (name, info.validation_alias):
            return str(info.validation_alias or ENV_PREFIX + name.upper())
    return field if field.isupper() else ENV_PREFIX + field.upper()


def problems(error: ValidationError) -> list[str]:
    """One line per invalid setting, named by its environment variable."""
    lines = []
    for item in error.errors():
        field = str(item["loc"][0]) if item["loc"] else ""
        lines.append(f"{env_name(field)}: {_message(item, field)}")
    return lines


def _message(item: Any, field: str) -> str:
    if item["type"] == "missing":
        return "missing; it is required"
    message = str(item["msg"]).removeprefix("Value error, ")
    if _may_echo(field) and isinstance(item.get("input"), str | int | float):
        message += f" (got {item['input']!r})"
    return message


def _may_echo(field: str) -> bool:
    """Whether a bad value may be shown: never for a secret or the database URL."""
    info = Settings.model_fields.get(field)
    if info is None or field == "database_url":  # unknown, or the URL by its alias
        return False
    return "SecretStr" not in str(info.annotation)
