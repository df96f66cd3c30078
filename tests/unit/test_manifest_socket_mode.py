"""The Socket Mode manifest: the same app as manifest.yml, reached over a WebSocket."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.shared import shared_dir

ROOT = Path(__file__).resolve().parents[2]


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", ["manifest.yml", "manifest.socket-mode.yml"])
def test_both_manifests_validate_against_slacks_schema(name: str) -> None:
    schema = json.loads(
        (shared_dir() / "slack-payloads" / "manifest.schema.1.0.0.json").read_text()
    )
    jsonschema.validate(load(name), schema)


def test_the_socket_mode_manifest_enables_socket_mode_and_has_no_request_urls() -> None:
    manifest = load("manifest.socket-mode.yml")
    assert manifest["settings"]["socket_mode_enabled"] is True
    assert "url" not in manifest["features"]["slash_commands"][0]
    assert "request_url" not in manifest["settings"]["interactivity"]
    assert "request_url" not in manifest["settings"]["event_subscriptions"]


def test_the_http_manifest_keeps_socket_mode_off() -> None:
    assert load("manifest.yml")["settings"]["socket_mode_enabled"] is False


def test_both_manifests_declare_the_same_scopes_commands_and_events() -> None:
    http, socket = load("manifest.yml"), load("manifest.socket-mode.yml")

    def without_urls(commands: list[dict]) -> list[dict]:
        return [{k: v for k, v in c.items() if k != "url"} for c in commands]

    assert http["oauth_config"] == socket["oauth_config"]
    assert without_urls(http["features"]["slash_commands"]) == without_urls(
        socket["features"]["slash_commands"]
    )
    assert (
        http["settings"]["event_subscriptions"]["bot_events"]
        == socket["settings"]["event_subscriptions"]["bot_events"]
    )
    assert http["features"]["app_home"] == socket["features"]["app_home"]
