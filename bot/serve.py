"""Serving the bot over HTTP with waitress, a production WSGI server."""

from __future__ import annotations

import logging
import threading
from typing import Any

from waitress.server import create_server

from bot.app import JitBot

log = logging.getLogger(__name__)


class HttpServer:
    """The bot's WSGI app on a waitress server; ``port=0`` picks a free port."""

    def __init__(self, bot: JitBot, host: str, port: int, threads: int = 8) -> None:
        self.bot = bot
        # X-Forwarded-For reaches the app as sent; only bot.myip reads it, and believes
        # it only from JITBOT_TRUSTED_PROXIES (several proxies and CIDRs, which
        # waitress's own single trusted_proxy cannot express).
        self._server: Any = create_server(
            bot.wsgi(),
            host=host,
            port=port,
            threads=threads,
            ident="jitbot",
            clear_untrusted_proxy_headers=False,
        )
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.socket.getsockname()[:2]
        return f"http://{host}:{port}"

    def start_in_thread(self) -> HttpServer:
        self._thread = threading.Thread(target=self._server.run, name="jitbot-http", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        if self.bot.settings.socket_mode:
            log.info("serving /healthz, /readyz and /metrics at %s (Socket Mode)", self.url)
        else:
            log.info("serving Slack requests at %s/slack/events", self.url)
        self._server.run()

    def stop_serving(self) -> None:
        """Ask the serving loop to end (safe from a signal handler or another thread)."""
        self._server.trigger.pull_trigger(lambda: _close_all(self._server))

    def close(self) -> None:
        """Stop serving: close every connection from inside the server's own loop, so the
        loop ends by itself, then stop the worker threads."""
        server = self._server
        if self._thread is not None and self._thread.is_alive():
            self.stop_serving()
            self._thread.join(timeout=5)
        elif server._map:
            _close_all(server)
        server.task_dispatcher.shutdown()


def _close_all(server: Any) -> None:
    for channel in list(server._map.values()):
        try:
            channel.close()
        except OSError:
            log.debug("a connection was already closed at shutdown")
