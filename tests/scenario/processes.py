"""The bot as real operating-system processes (``jitbot serve``), to be killed and restarted.

The stand-ins of Azure and Slack run in the test process and outlive every bot process,
as Azure and Slack outlive a crashed bot.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from bot.sandbox import SANDBOX_ARM_TOKEN, SANDBOX_BOT_TOKEN
from jitcore.db import Store, make_engine
from jitcore.model import AccessRequest
from sandbox.arm.server import ArmServer
from sandbox.slack.server import SlackServer


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class BotProcess:
    """One ``jitbot serve`` process configured from environment variables."""

    def __init__(self, name: str, env: dict[str, str], workdir: Path) -> None:
        self.name = name
        self.port = free_port()
        self.env = {**env, "JITBOT_PORT": str(self.port)}
        self.log_path = workdir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> BotProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bot.cli", "serve"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited: {self.log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=1) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"{self.name} not ready: {self.log_path.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL: no cleanup, no goodbye, exactly like a crash or an OOM kill."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class ProcessWorld:
    """Stand-ins in this process, bots as child processes, one shared database."""

    def __init__(self, workdir: Path, database_url: str, policy_file: Path, **arm: Any) -> None:
        self.workdir = workdir
        self.database_url = database_url
        self.policy_file = policy_file
        self.signing_secret = "process-test-signing-secret"
        self.arm = ArmServer(
            workdir=workdir,
            token=SANDBOX_ARM_TOKEN,
            lro_polls=1,
            retry_after=0,
            lro_timeout=2.0,
            **arm,
        ).start()
        self.slack = SlackServer(bot_token=SANDBOX_BOT_TOKEN).start()
        self.store = Store(make_engine(database_url))
        self.bots: list[BotProcess] = []

    def env(self, **overrides: str) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("JITBOT_", "AZURE_"))}
        keep.pop("DATABASE_URL", None)
        return {
            **keep,
            "DATABASE_URL": self.database_url,
            "JITBOT_POLICY_FILE": str(self.policy_file),
            "JITBOT_SLACK_SIGNING_SECRET": self.signing_secret,
            "JITBOT_SLACK_BOT_TOKEN": SANDBOX_BOT_TOKEN,
            "JITBOT_SLACK_API_URL": self.slack.url,
            "JITBOT_AZURE_SUBSCRIPTION_ID": self.arm.subscription_id,
            "JITBOT_AZURE_CREDENTIAL": "static",
            "JITBOT_AZURE_STATIC_TOKEN": SANDBOX_ARM_TOKEN,
            "JITBOT_ARM_URL": self.arm.url,
            "JITBOT_GRAPH_URL": self.arm.url,
            "JITBOT_ARM_CA_BUNDLE": str(self.arm.ca_path),
            "JITBOT_ARM_POLLING_INTERVAL": "0.05",
            "JITBOT_HOST": "127.0.0.1",
            "JITBOT_SWEEP_INTERVAL_SECONDS": "1",
            "JITBOT_LEASE_SECONDS": "5",
            "JITBOT_LOG_LEVEL": "INFO",
            **overrides,
        }

    def start_bot(self, name: str, **overrides: str) -> BotProcess:
        bot = BotProcess(name, self.env(**overrides), self.workdir).start()
        self.bots.append(bot)
        return bot

    def request(self, request_id: int) -> AccessRequest | None:
        return self.store.get_request(request_id)

    def close(self) -> None:
        for bot in self.bots:
            bot.kill()
        self.store.engine.dispose()
        self.slack.stop()
        self.arm.stop()


class Endpoint:
    """What :class:`tests.scenario.harness.Driver` needs to talk to one bot process."""

    def __init__(self, world: ProcessWorld, bot: BotProcess) -> None:
        self.bot_url = bot.url
        self.slack = world.slack
        self.signing_secret = world.signing_secret
        self.bot = _StoreHolder(world.store)


class _StoreHolder:
    def __init__(self, store: Store) -> None:
        self.store = store
