"""Putting jitbot together: database, policies, Azure, the engine, the clock and Bolt."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from slack_bolt import App
from slack_bolt.adapter.wsgi import SlackRequestHandler
from slack_sdk import WebClient
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler
from sqlalchemy import text

from bot import listeners
from bot.edge import SlackEdge
from bot.gate import AccessGate, build_gate
from bot.metrics import Metrics
from bot.myip import LINK_PATH, SourceLinkPages, SourceLinks, parse_proxies
from bot.notifier import SlackNotifier
from bot.protection import ProtectionDesk
from bot.requesting import RequestDesk
from bot.settings import Settings, split_list
from jitcore.azure import AzureNetwork, AzureTarget
from jitcore.azure.clients import StaticTokenCredential, default_credential
from jitcore.azure.defender import DefenderGateway
from jitcore.azure.firewall import FirewallGateway
from jitcore.clock import ExpiryClock
from jitcore.db import Store, create_schema, make_engine
from jitcore.engine import Engine, PolicySet
from jitcore.model import utcnow
from jitcore.policy import load_policy_file
from jitcore.protection import DriftFinding, Protector
from jitcore.source_flags import SourceFlagger, load_cloud_ranges

log = logging.getLogger(__name__)

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


@dataclass
class JitBot:
    settings: Settings
    store: Store
    engine: Engine
    clock: ExpiryClock
    bolt: App
    network: AzureNetwork
    background: ThreadPoolExecutor
    protector: Protector
    metrics: Metrics | None = None
    gate: AccessGate | None = None
    defender: DefenderGateway | None = None
    socket: Any = None
    link_pages: SourceLinkPages | None = None

    def start(self) -> None:
        self.engine.check_defender_plans()  # before the first sweep opens anything
        self.clock.start()
        if self.settings.socket_mode:
            self._connect_socket_mode()
        if self.settings.expiry_warning_seconds > 0:
            self.clock.scheduler.add_job(
                self._warn_expiring,
                "interval",
                seconds=self.settings.sweep_interval_seconds,
                id="expiry-warning",
                replace_existing=True,
            )

    def _warn_expiring(self) -> None:
        """The expiring-soon job; like the sweep, it runs again at the next interval."""
        try:
            self.engine.warn_expiring(timedelta(seconds=self.settings.expiry_warning_seconds))
        except Exception:
            log.exception("warning of expiring grants failed; trying again at the next interval")

    def _connect_socket_mode(self) -> None:
        """Open the Socket Mode link; slack_sdk keeps it open and reconnects when it drops.

        Raises SocketModeRefused when Slack refuses the app token.
        """
        from bot.socket_mode import connect, socket_mode_handler

        assert self.settings.slack_app_token is not None
        self.socket = socket_mode_handler(
            self.bolt,
            self.settings.slack_app_token.get_secret_value(),
            lambda key: self.store.first_sighting(key, utcnow()),
            self.settings.socket_ping_interval,
        )
        connect(self.socket)
        log.info("Socket Mode: connected to Slack; /slack/events is not served over HTTP")

    def stop(self) -> None:
        if self.socket is not None:
            self.socket.close()
            self.socket = None
        self.background.shutdown(wait=True)
        self.clock.stop()
        self.network.close()
        if self.engine.firewalls is not None:
            self.engine.firewalls.close()
        if self.defender is not None:
            self.defender.close()
        if self.gate is not None:
            self.gate.close()
        self.store.engine.dispose()

    def ready(self) -> bool:
        if not self.clock.scheduler.running:
            return False
        try:
            with self.store.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except Exception:
            log.warning("readiness check: the database does not answer")
            return False
        if self.socket is not None and not self.socket.client.is_connected():
            log.warning("readiness check: the Socket Mode link to Slack is down")
            return False
        return True

    def wsgi(self) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
        """The WSGI app: Slack at /slack/events, plus /healthz, /readyz and /metrics.

        In Socket Mode Slack's requests come over the WebSocket, so /slack/events answers
        404: nothing may reach Bolt around the authenticated link.
        """
        slack = SlackEdge(
            SlackRequestHandler(self.bolt, path="/slack/events"),
            self.settings.slack_signing_secret.get_secret_value(),
            lambda signature: self.store.first_sighting(signature, utcnow()),
        )

        def application(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "")
            if path == "/healthz":
                return _plain(start_response, "200 OK", b"ok")
            if path == "/readyz":
                if self.ready():
                    return _plain(start_response, "200 OK", b"ready")
                return _plain(start_response, "503 Service Unavailable", b"not ready")
            if path == "/metrics" and self.metrics is not None:
                return self.metrics.serve(environ, start_response)
            if path.startswith(LINK_PATH) and self.link_pages is not None:
                return self.link_pages(environ, start_response)
            if self.settings.socket_mode:
                return _plain(start_response, "404 Not Found", b"Socket Mode: no HTTP events")
            return slack(environ, start_response)

        return application


def _plain(start_response: StartResponse, status: str, body: bytes) -> list[bytes]:
    start_response(
        status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    )
    return [body]


def azure_target(settings: Settings) -> AzureTarget:
    if settings.azure_credential == "static":
        assert settings.azure_static_token is not None
        credential: Any = StaticTokenCredential(settings.azure_static_token.get_secret_value())
    else:
        credential = default_credential()
    return AzureTarget(
        subscription_id=settings.azure_subscription_id,
        credential=credential,
        base_url=settings.arm_url,
        ca_bundle=str(settings.arm_ca_bundle) if settings.arm_ca_bundle else None,
        polling_interval=settings.arm_polling_interval,
    )


def slack_client(settings: Settings) -> WebClient:
    client = WebClient(
        token=settings.slack_bot_token.get_secret_value(),
        base_url=settings.slack_api_url,
        timeout=10,
    )
    client.retry_handlers.append(RateLimitErrorRetryHandler(max_retry_count=3))
    return client


def slack_group_members(client: WebClient) -> Callable[[str], list[str]]:
    """Reads an approver user group's members with usergroups.users.list (scope
    usergroups:read), each time it is asked: membership is never cached or taken from a
    click."""

    def members(group_id: str) -> list[str]:
        response = client.usergroups_users_list(usergroup=group_id)
        return [str(user) for user in response.get("users") or []]

    return members


def build(settings: Settings) -> JitBot:
    """Wire every part from settings. Nothing talks to Slack or Azure until started."""
    store = Store(make_engine(settings.database_url), audit_feed=settings.audit_channel is not None)
    create_schema(store.engine)
    policies = load_policy_file(settings.policy_file)
    versions = store.save_policy_versions({p.name: p.body() for p in policies}, origin="file")

    metrics = Metrics(store, token=settings.metrics_token)
    client = metrics.watch_slack(slack_client(settings))
    target = metrics.watch_arm(azure_target(settings))
    network = AzureNetwork(target)
    firewalls = FirewallGateway(target) if any(p.firewall for p in policies) else None
    defender = (
        DefenderGateway(target) if any(p.enforcement == "defender" for p in policies) else None
    )
    cloud_ranges = load_cloud_ranges([Path(p) for p in split_list(settings.cloud_ranges)])
    notifier = SlackNotifier(
        client, SourceFlagger(cloud_ranges), audit_channel=settings.audit_channel
    )
    engine = Engine(
        store=store,
        policies=PolicySet(policies, versions),
        cloud=network,
        notifier=notifier,
        pending_timeout=timedelta(seconds=settings.pending_timeout_seconds),
        lease_seconds=settings.lease_seconds,
        firewalls=firewalls,
        defender=defender,
        group_members=slack_group_members(client),
    )
    metrics.watch_engine(engine, network)

    def report_drift(channel: str, findings: list[DriftFinding]) -> None:
        try:
            notifier.drift_detected(channel, [f.describe() for f in findings])
        except Exception:
            log.exception("could not report drift to %s", channel)

    protector = Protector(store, engine.policies, network, on_drift=report_drift)
    clock = ExpiryClock(
        engine,
        timedelta(seconds=settings.sweep_interval_seconds),
        protector=protector,
        reconcile_interval=timedelta(seconds=settings.reconcile_interval_seconds),
    )
    bolt = App(
        signing_secret=settings.slack_signing_secret.get_secret_value(),
        client=client,
        token_verification_enabled=False,
        process_before_response=False,
        logger=logging.getLogger("bot.bolt"),
    )
    background = ThreadPoolExecutor(max_workers=4, thread_name_prefix="jitbot-work")
    gate = build_gate(settings, engine, client, azure_target(settings))  # identity and RBAC
    desk = ProtectionDesk(protector, network.vm_names, client)
    links = SourceLinks(store, timedelta(seconds=settings.my_ip_ttl))
    request_desk = RequestDesk(engine, gate, client, background, links, settings.public_url)
    link_pages = SourceLinkPages(
        links,
        parse_proxies(split_list(settings.trusted_proxies)),
        request_desk.describe_link,
        request_desk.complete_link,
        request_desk.link_refusal,
    )
    listeners.register(bolt, engine, background, gate, desk, request_desk)
    return JitBot(
        settings,
        store,
        engine,
        clock,
        bolt,
        network,
        background,
        protector,
        metrics=metrics,
        gate=gate,
        defender=defender,
        link_pages=link_pages if settings.public_url else None,
    )
