"""`jitbot check-config`: every invalid setting named by its environment variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.cli import main
from bot.settings import Settings, env_name

SUBSCRIPTION = "00000000-0000-0000-0000-00000000a11c"
SIGNING_SECRET = "8f14e45fceea167a5a36dedd4bea2543"
BOT_TOKEN = "xoxb-1111-2222-sEcReTtOkEn"

POLICY = """
policies:
  - name: web-admin
    vms: [vm-web01]
    ports:
      - {port: 22, protocol: Tcp, max_duration: 3h}
    approvers: [U0APPROVR1]
    approval_channel: C0OPS12345
"""


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policies.yaml"
    path.write_text(POLICY, encoding="utf-8")
    return path


@pytest.fixture
def valid_env(monkeypatch: pytest.MonkeyPatch, policy_file: Path) -> pytest.MonkeyPatch:
    monkeypatch.setenv("JITBOT_SLACK_SIGNING_SECRET", SIGNING_SECRET)
    monkeypatch.setenv("JITBOT_SLACK_BOT_TOKEN", BOT_TOKEN)
    monkeypatch.setenv("JITBOT_AZURE_SUBSCRIPTION_ID", SUBSCRIPTION)
    monkeypatch.setenv("JITBOT_POLICY_FILE", str(policy_file))
    return monkeypatch


def check_config(capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["check-config"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_valid_configuration_passes(
    valid_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], policy_file: Path
) -> None:
    code, out, err = check_config(capsys)

    assert code == 0, err
    assert out.strip() == f"configuration valid; 1 policies in {policy_file}"


def test_every_missing_required_setting_is_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], policy_file: Path
) -> None:
    monkeypatch.setenv("JITBOT_POLICY_FILE", str(policy_file))

    code, out, err = check_config(capsys)

    assert code == 1
    assert out == ""
    assert "3 problem(s)" in err
    for name in (
        "JITBOT_SLACK_SIGNING_SECRET",
        "JITBOT_SLACK_BOT_TOKEN",
        "JITBOT_AZURE_SUBSCRIPTION_ID",
    ):
        assert f"  {name}: missing; it is required" in err


def test_every_invalid_value_is_reported_at_once(
    valid_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    valid_env.setenv("JITBOT_PORT", "70000")
    valid_env.setenv("JITBOT_HTTP_THREADS", "many")
    valid_env.setenv("JITBOT_SWEEP_INTERVAL_SECONDS", "0")
    valid_env.setenv("JITBOT_LOG_FORMAT", "xml")
    valid_env.setenv("JITBOT_LOG_LEVEL", "loud")
    valid_env.setenv("JITBOT_AZURE_SUBSCRIPTION_ID", "my-subscription")
    valid_env.setenv("JITBOT_AZURE_CREDENTIAL", "static")

    code, _out, err = check_config(capsys)

    assert code == 1
    lines = [line.strip() for line in err.splitlines()[1:]]
    assert [line.split(":", 1)[0] for line in lines] == [
        "JITBOT_PORT",
        "JITBOT_HTTP_THREADS",
        "JITBOT_AZURE_SUBSCRIPTION_ID",
        "JITBOT_AZURE_STATIC_TOKEN",
        "JITBOT_SWEEP_INTERVAL_SECONDS",
        "JITBOT_LOG_FORMAT",
        "JITBOT_LOG_LEVEL",
    ]
    assert "less than or equal to 65535 (got '70000')" in lines[0]
    assert "required when JITBOT_AZURE_CREDENTIAL=static" in lines[3]
    assert "DEBUG, INFO, WARNING, ERROR, CRITICAL (got 'loud')" in lines[6]


def test_secrets_and_the_database_url_are_never_echoed(
    valid_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    valid_env.setenv("JITBOT_SLACK_BOT_TOKEN", "xoxp-user-token-sEcReT")
    valid_env.setenv("DATABASE_URL", "mysql://jit:hunter2@db.internal/jitbot")

    code, out, err = check_config(capsys)

    assert code == 1
    assert "JITBOT_SLACK_BOT_TOKEN: a bot token starts with xoxb-" in err
    assert "DATABASE_URL: mysql is not supported; use sqlite or postgresql" in err
    for secret in ("sEcReT", "hunter2", SIGNING_SECRET):
        assert secret not in out + err


def test_a_broken_policy_file_is_reported_with_the_settings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("policies: [", encoding="utf-8")
    monkeypatch.setenv("JITBOT_POLICY_FILE", str(broken))

    code, _out, err = check_config(capsys)

    assert code == 1
    assert "4 problem(s)" in err
    assert f"JITBOT_POLICY_FILE: cannot read policy file {broken}" in err


def test_a_missing_policy_file_is_reported(
    valid_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    valid_env.setenv("JITBOT_POLICY_FILE", str(tmp_path / "nowhere.yaml"))

    code, _out, err = check_config(capsys)

    assert code == 1
    assert "JITBOT_POLICY_FILE: cannot read policy file" in err


def test_serve_refuses_to_start_and_lists_the_problems(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JITBOT_PORT", "-1")

    with pytest.raises(SystemExit) as stopped:
        main(["serve"])

    message = str(stopped.value.code)
    assert message.startswith("jitbot: invalid configuration:")
    assert "  JITBOT_PORT: Input should be greater than or equal to 0 (got '-1')" in message
    assert "  JITBOT_SLACK_SIGNING_SECRET: missing; it is required" in message


@pytest.mark.parametrize(
    ("field", "variable"),
    [
        pytest.param("port", "JITBOT_PORT", id="prefixed"),
        pytest.param("database_url", "DATABASE_URL", id="field-with-alias"),
        pytest.param("DATABASE_URL", "DATABASE_URL", id="alias"),
    ],
)
def test_env_name_follows_prefix_and_aliases(field: str, variable: str) -> None:
    assert env_name(field) == variable


def test_every_setting_has_an_environment_variable() -> None:
    names = {env_name(field) for field in Settings.model_fields}

    assert len(names) == len(Settings.model_fields)
    assert all(name.startswith("JITBOT_") or name == "DATABASE_URL" for name in names)


def test_the_operations_guide_lists_every_setting() -> None:
    guide = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text(
        encoding="utf-8"
    )

    missing = [env_name(f) for f in Settings.model_fields if f"`{env_name(f)}`" not in guide]

    assert not missing, f"docs/operations.md does not describe {missing}"
