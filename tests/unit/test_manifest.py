from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import yaml

from tests.shared import shared_dir

ROOT = Path(__file__).resolve().parents[2]


def load_manifest() -> dict:
    return yaml.safe_load((ROOT / "manifest.yml").read_text(encoding="utf-8"))


def test_manifest_validates_against_slacks_schema() -> None:
    schema = json.loads(
        (shared_dir() / "slack-payloads" / "manifest.schema.1.0.0.json").read_text()
    )
    jsonschema.validate(load_manifest(), schema)


def test_manifest_declares_the_command_and_interactivity_the_bot_serves() -> None:
    manifest = load_manifest()
    [command] = manifest["features"]["slash_commands"]
    assert command["command"] == "/jit"
    assert command["url"].endswith("/slack/events")
    assert manifest["settings"]["interactivity"]["request_url"].endswith("/slack/events")
    assert manifest["settings"]["interactivity"]["is_enabled"] is True


def test_manifest_subscribes_to_app_home_opened_and_enables_the_home_tab() -> None:
    manifest = load_manifest()
    events = manifest["settings"]["event_subscriptions"]
    assert events["request_url"].endswith("/slack/events")
    assert events["bot_events"] == ["app_home_opened"]
    assert manifest["features"]["app_home"]["home_tab_enabled"] is True
