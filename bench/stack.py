"""A bot in the benchmark process, wired to stand-ins running in a child process.

:class:`BenchStack` is the sandbox stack (:class:`bot.sandbox.SandboxStack`) with the
ARM and Slack stand-ins moved out to a child, so the bot has this process's GIL to
itself and the benchmark can time and inspect it directly (database, tracemalloc).
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bench.children import Child
from bot.sandbox import SandboxStack

_NO_PROXY = urllib.request.ProxyHandler({})
CALL_KINDS = (
    "/operations/",
    "/operationResults/",
    "/securityRules/",
    "roleAssignments",
    "roleDefinitions",
    "denyAssignments",
    "/v1.0/",
    "networkInterfaces",
    "virtualMachines",
    "networkSecurityGroups",
    "subnets",
)


def call_kind(path: str) -> str:
    """What an ARM (or Graph, under /v1.0/) path is about, for counting calls by kind."""
    for marker in CALL_KINDS:
        if marker.lower() in path.lower():
            return marker.strip("/")
    return "other"


class RemoteArm:
    """What SandboxStack reads from its ARM stand-in, for one in a child process."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.url: str = info["arm_url"]
        self.ca_path: str = info["ca_path"]
        self.subscription_id: str = info["subscription_id"]

    def requests(self) -> list[dict[str, Any]]:
        """The stand-in's log of every ARM call it answered."""
        context = ssl.create_default_context(cafile=self.ca_path)
        https = urllib.request.HTTPSHandler(context=context)
        opener = urllib.request.build_opener(_NO_PROXY, https)
        with opener.open(self.url + "/sandbox/requests", timeout=60) as response:
            return list(json.load(response))

    def stop(self) -> None:
        return None


class RemoteSlack:
    def __init__(self, info: dict[str, Any]) -> None:
        self.url: str = info["slack_url"]
        self.base: str = info["slack_base"]

    def response_url(self, name: str) -> str:
        return f"{self.base}/sandbox/response/{quote(name, safe='')}"

    def calls(self, method: str | None = None) -> list[dict[str, Any]]:
        query = f"?method={method}" if method else ""
        opener = urllib.request.build_opener(_NO_PROXY)
        with opener.open(f"{self.base}/sandbox/calls{query}", timeout=60) as response:
            return list(json.load(response))

    def stop(self) -> None:
        return None


class BenchStack(SandboxStack):
    """The bot here; the stand-ins are elsewhere (``standins`` is what their child wrote)."""

    def __init__(self, workdir: Path, standins: dict[str, Any], **options: Any) -> None:
        super().__init__(workdir, **options)
        self.arm = RemoteArm(standins)
        self.slack = RemoteSlack(standins)

    def start(self) -> BenchStack:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.start_bot()
        return self


def start_standins(workdir: Path, *options: str) -> Child:
    return Child.start("standins", workdir, *options)


def start_until_ready(stack: BenchStack) -> float:
    """Start the bot; the seconds from building it to its /readyz answering 200."""
    started = time.perf_counter()
    stack.start()
    opener = urllib.request.build_opener(_NO_PROXY)
    while True:
        try:
            with opener.open(stack.bot_url + "/readyz", timeout=5) as response:
                if response.status == 200:
                    return time.perf_counter() - started
        except OSError:
            pass
        time.sleep(0.01)
