"""The whole loop on one machine: the bot wired to the local Azure and Slack stand-ins.

``jitbot sandbox`` runs this for people; the scenario tests run the same stack, so what
a newcomer sees is what the tests prove.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from bot.app import JitBot, build
from bot.serve import HttpServer
from bot.settings import Settings

log = logging.getLogger(__name__)

SANDBOX_ARM_TOKEN = "sandbox-arm-token"
SANDBOX_BOT_TOKEN = "xoxb-sandbox-0000000000-jitbot"
SANDBOX_APP_TOKEN = "xapp-1-A0JITBOT01-0000000000-jitbot"


def _jitbot() -> str:
    """How to call this same jitbot from another terminal."""
    command = Path(sys.argv[0])
    return str(command) if command.name == "jitbot" else "jitbot"


def seed_file(name: str) -> Path:
    return Path(str(resources.files("sandbox") / "seeds" / name))


def sandbox_request_settings(port: int) -> dict[str, Any]:
    """Settings that show requests without a source in the sandbox: the "use my current
    IP" link on the bot's own port (when known in advance), and the sample Azure cloud
    ranges (documentation addresses, not Azure's) so that a source can be flagged.

    Everything here connects from 127.0.0.1, which no policy accepts as a source, so
    127.0.0.1 stands in for a reverse proxy: ``curl -H 'X-Forwarded-For: 198.51.100.7'``
    plays a browser at that address.
    """
    settings: dict[str, Any] = {
        "cloud_ranges": str(seed_file("cloud-ranges-azure.sample.json")),
        "trusted_proxies": "127.0.0.1",
    }
    if port:
        settings["public_url"] = f"http://127.0.0.1:{port}"
    return settings


class SandboxStack:
    """The ARM stand-in (HTTPS), the Slack stand-in, and the bot, all on 127.0.0.1.

    Args:
        workdir: holds the certificate, the SQLite database and the state file.
        bot_port: 0 picks a free port.
        database_url: defaults to a SQLite file in ``workdir``.
        policy_file: defaults to the sandbox policies shipped with the package.
        fresh: delete an existing SQLite database first.
        arm_options: extra keyword arguments for the ARM stand-in (faults, timings).
        arm_seed: the subscription the ARM stand-in serves; the shipped default if None.
        settings: extra bot settings (``Settings`` field names), e.g. cache times.
        socket_mode: Slack reaches the bot over Socket Mode (the stand-in's WebSocket)
            instead of HTTP requests.
        slack_ack_timeout: how long the Slack stand-in waits for a Socket Mode ack.
    """

    def __init__(
        self,
        workdir: Path,
        bot_port: int = 0,
        database_url: str | None = None,
        policy_file: Path | None = None,
        signing_secret: str | None = None,
        fresh: bool = False,
        sweep_interval: float = 30.0,
        arm_options: dict[str, Any] | None = None,
        arm_seed: Path | dict[str, Any] | None = None,
        reconcile_interval: float = 300.0,
        settings: dict[str, Any] | None = None,
        socket_mode: bool = False,
        slack_ack_timeout: float = 3.0,
    ) -> None:
        self.workdir = Path(workdir)
        self.bot_port = bot_port
        self.database_url = database_url or f"sqlite:///{self.workdir / 'jitbot.db'}"
        self.policy_file = policy_file or seed_file("policies.yaml")
        self.signing_secret = signing_secret or secrets.token_hex(16)
        self.sweep_interval = sweep_interval
        self.arm_options = arm_options or {}
        self.arm_seed = arm_seed if arm_seed is not None else seed_file("default.json")
        self.reconcile_interval = reconcile_interval
        self.extra_settings = settings or {}
        self.fresh = fresh
        self.socket_mode = socket_mode
        self.slack_ack_timeout = slack_ack_timeout
        self.arm: Any = None
        self.slack: Any = None
        self.bot: JitBot | None = None
        self.http: HttpServer | None = None

    def start(self) -> SandboxStack:
        from sandbox.arm.server import ArmServer
        from sandbox.slack.server import SlackServer

        self.workdir.mkdir(parents=True, exist_ok=True)
        database = self.workdir / "jitbot.db"
        if self.fresh and database.exists():
            database.unlink()
        options = {"lro_polls": 1, "retry_after": 0, "lro_timeout": 2.0, **self.arm_options}
        self.arm = ArmServer(
            seed=self.arm_seed,
            workdir=self.workdir,
            token=SANDBOX_ARM_TOKEN,
            **options,
        ).start()
        self.slack = SlackServer(
            bot_token=SANDBOX_BOT_TOKEN,
            app_token=SANDBOX_APP_TOKEN,
            ack_timeout=self.slack_ack_timeout,
        ).start()
        self.start_bot()
        return self

    def settings(self) -> Settings:
        socket: dict[str, Any] = {}
        if self.socket_mode:
            socket = {"slack_app_token": SANDBOX_APP_TOKEN, "socket_ping_interval": 1.0}
        return Settings(
            database_url=self.database_url,
            policy_file=self.policy_file,
            slack_signing_secret=self.signing_secret,
            slack_bot_token=SANDBOX_BOT_TOKEN,
            slack_api_url=self.slack.url,
            host="127.0.0.1",
            port=self.bot_port,
            azure_subscription_id=self.arm.subscription_id,
            azure_credential="static",
            azure_static_token=SANDBOX_ARM_TOKEN,
            arm_url=self.arm.url,
            arm_ca_bundle=Path(self.arm.ca_path),
            arm_polling_interval=0.05,
            sweep_interval_seconds=self.sweep_interval,
            reconcile_interval_seconds=self.reconcile_interval,
            graph_url=self.arm.url,  # the ARM stand-in also serves Graph, under /v1.0/
            **socket,
            **self.extra_settings,
        )  # type: ignore[call-arg]

    def start_bot(self) -> None:
        """Start (or start again) the bot on the same database and stand-ins."""
        settings = self.settings()
        self.bot = build(settings)
        self.bot.start()
        self.http = HttpServer(self.bot, settings.host, settings.port).start_in_thread()
        if self.bot_port == 0:
            self.bot_port = int(self.http.url.rsplit(":", 1)[1])

    def stop_bot(self) -> None:
        if self.http is not None:
            self.http.close()
            self.http = None
        if self.bot is not None:
            self.bot.stop()
            self.bot = None

    def stop(self) -> None:
        self.stop_bot()
        if self.slack is not None:
            self.slack.stop()
        if self.arm is not None:
            self.arm.stop()

    @property
    def bot_url(self) -> str:
        assert self.http is not None
        return self.http.url

    def describe(self) -> dict[str, Any]:
        """What `jitbot send` needs to reach this sandbox (kept in the work directory)."""
        return {
            "bot_url": self.bot_url,
            "mode": "socket" if self.socket_mode else "http",
            "signing_secret": self.signing_secret,
            "slack_url": self.slack.url,
            "response_url": self.slack.response_url("commands"),
            "arm_url": self.arm.url,
            "ca_path": str(self.arm.ca_path),
            "database_url": self.database_url,
        }

    def banner(self) -> str:
        info = self.describe()
        slack_base = info["slack_url"].removesuffix("/").removesuffix("/api")
        socket_link = slack_base.replace("http://", "ws://") + "/link/"
        return "\n".join(
            [
                "jitbot sandbox is running (Ctrl-C stops it)",
                (
                    f"  bot (Socket Mode)     WebSocket to {socket_link};"
                    f" health at {info['bot_url']}/healthz"
                    if self.socket_mode
                    else f"  bot (Slack requests)  {info['bot_url']}/slack/events"
                ),
                f"  signing secret        {info['signing_secret']}",
                f"  Azure RM stand-in     {info['arm_url']}  (CA: {info['ca_path']})",
                f"  Slack API stand-in    {info['slack_url']}",
                f"  database              {info['database_url']}",
                "",
                "Try it, in another terminal (same folder):",
                f"  {_jitbot()} send command 'request vm-web01 22 2h from 203.0.113.7'",
                f"  {_jitbot()} send approve 1          # as approver U0APPROVR1",
                f"  {_jitbot()} send command 'request vm-web01 22 1h'"
                "   # no `from`: a one-time 'Use my current IP' link",
                f"  kill -HUP {os.getpid()}      # restart only the bot; live grants still expire",
                f"  curl -s {slack_base}/sandbox/calls      # what the bot posted to Slack",
                f"  curl -s --cacert {info['ca_path']} {info['arm_url']}/sandbox/state"
                "   # the Azure side",
            ]
        )
