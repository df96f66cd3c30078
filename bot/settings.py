"""Configuration, from environment variables (``JITBOT_*``), validated at start.

Errors name the setting. Secrets are ``SecretStr`` so they never print by accident.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="JITBOT_", extra="ignore")

    database_url: str = Field(
        default="sqlite:///jitbot.db",
        validation_alias="DATABASE_URL",
        description="SQLAlchemy URL; sqlite:///file.db or postgresql://user@host/db",
    )
    policy_file: Path = Path("policies.yaml")

    slack_signing_secret: SecretStr
    slack_bot_token: SecretStr
    slack_api_url: str = "https://slack.com/api/"
    host: str = "0.0.0.0"
    port: int = Field(default=3000, ge=0, le=65535)
    http_threads: int = Field(default=8, ge=1, le=64)

    azure_subscription_id: str
    azure_credential: Literal["default", "static"] = "default"
    azure_static_token: SecretStr | None = None
    arm_url: str = "https://management.azure.com"
    arm_ca_bundle: Path | None = None
    arm_polling_interval: float = Field(default=5.0, ge=0)

    sweep_interval_seconds: float = Field(default=30.0, gt=0)
    reconcile_interval_seconds: float = Field(default=300.0, gt=0)
    pending_timeout_seconds: float = Field(default=3600.0, gt=0)
    log_format: Literal["text", "json"] = "text"
    log_level: str = "INFO"

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.azure_credential == "static" and self.azure_static_token is None:
            raise ValueError(
                "JITBOT_AZURE_STATIC_TOKEN is required when JITBOT_AZURE_CREDENTIAL=static"
            )
        return self
