"""One-time "use my current IP" links, served by the bot's own HTTP server.

A request typed without a source (and with none saved) is kept as a draft behind a link
``<JITBOT_PUBLIC_URL>/my-ip/<token>``. Opening the link shows the address the browser
comes from and a button; pressing it (a POST, so link scanners and previews that fetch
the page use nothing up) records that address as the source and sends the request to
the approvers, or says what was wrong with the address.

The token is 256 random bits; only its SHA-256 is stored. A link works once, for
``JITBOT_MY_IP_TTL`` seconds, for the draft and user it was made for. Unknown, used or
expired links get the same plain error page and change nothing.

The address is ``REMOTE_ADDR``, unless that is one of ``JITBOT_TRUSTED_PROXIES``: then
``X-Forwarded-For`` is read from the right, skipping trusted proxies, and the first
address that is not one is the browser's. Entries left of it were written by whoever
sent the request and are never believed.
"""

from __future__ import annotations

import hashlib
import html
import ipaddress
import logging
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, update
from sqlmodel import col

from jitcore.db import Store
from jitcore.model import SourceLink, utcnow

log = logging.getLogger(__name__)

LINK_PATH = "/my-ip/"
FORGET_AFTER = timedelta(days=1)
"""Expired links are deleted this long after they expire (when the next one is made)."""
_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


class SourceLinks:
    """The stored links: made, looked at, and used once."""

    def __init__(
        self, store: Store, ttl: timedelta, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self.store = store
        self.ttl = ttl
        self.clock = clock

    def create(self, user_id: str, team_id: str, draft: dict[str, Any]) -> str:
        """Store a link for ``draft``; return its token (shown once, never stored)."""
        token = secrets.token_urlsafe(32)
        now = self.clock()
        with self.store.session() as session:
            session.execute(
                delete(SourceLink).where(col(SourceLink.expires_at) < now - FORGET_AFTER)
            )
            session.add(
                SourceLink(
                    token_hash=hash_token(token),
                    slack_user_id=user_id,
                    team_id=team_id,
                    draft=draft,
                    created_at=now,
                    expires_at=now + self.ttl,
                )
            )
            session.commit()
        return token

    def peek(self, token: str) -> SourceLink | None:
        """The link if it is known, unused and unexpired; nothing changes."""
        if not _TOKEN.fullmatch(token):
            return None
        with self.store.session() as session:
            link = session.get(SourceLink, hash_token(token))
        if link is None or link.used_at is not None:
            return None
        assert link.expires_at is not None
        return link if link.expires_at > self.clock() else None

    def redeem(self, token: str) -> SourceLink | None:
        """Mark the link used and return it, if it is known, unused and unexpired.

        One conditional update: of two uses at once, one wins.
        """
        if not _TOKEN.fullmatch(token):
            return None
        now = self.clock()
        token_hash = hash_token(token)
        statement = (
            update(SourceLink)
            .where(col(SourceLink.token_hash) == token_hash)
            .where(col(SourceLink.used_at).is_(None))
            .where(col(SourceLink.expires_at) > now)
            .values(used_at=now)
        )
        with self.store.session() as session:
            result = session.execute(statement)
            session.commit()
            if result.rowcount != 1:  # type: ignore[attr-defined]
                return None
            return session.get(SourceLink, token_hash)


def parse_proxies(items: Iterable[str]) -> list[Network]:
    return [ipaddress.ip_network(item, strict=False) for item in items]


def client_address(environ: dict[str, Any], trusted: list[Network]) -> str | None:
    """The browser's address (see the module docstring), or None if it cannot be told."""
    remote = _address(str(environ.get("REMOTE_ADDR", "")))
    if remote is None:
        return None
    if not _trusted(remote, trusted):
        return str(remote)
    forwarded = str(environ.get("HTTP_X_FORWARDED_FOR", ""))
    hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
    current = remote
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:
            return None
        current = address
        if not _trusted(address, trusted):
            return str(address)
    return str(current)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, trusted: list[Network]
) -> bool:
    return any(address.version == net.version and address in net for net in trusted)


@dataclass(frozen=True)
class LinkOutcome:
    ok: bool
    text: str


class SourceLinkPages:
    """The WSGI handler for ``/my-ip/<token>``.

    ``describe`` turns a valid link into a sentence of what it requests; ``complete`` is
    called with a link just used and the browser's address, and says what happened.
    """

    def __init__(
        self,
        links: SourceLinks,
        trusted: list[Network],
        describe: Callable[[SourceLink], str],
        complete: Callable[[SourceLink, str], LinkOutcome],
        refusal: Callable[[SourceLink, str], str | None] = lambda link, address: None,
    ) -> None:
        self.links = links
        self.trusted = trusted
        self.describe = describe
        self.complete = complete
        self.refusal = refusal
        """Why the policies would refuse the link's request from an address, if they
        would; asked before the link is used up, so the link still works from another
        network."""

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        token = str(environ.get("PATH_INFO", ""))[len(LINK_PATH) :]
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in ("GET", "POST"):
            return _page(start_response, "405 Method Not Allowed", "Not allowed", "")
        address = client_address(environ, self.trusted)
        if method == "GET":
            link = self.links.peek(token)
            if link is None:
                return _gone(start_response)
            if address is None:
                return _no_address(start_response)
            body = (
                f"<p>{html.escape(self.describe(link))}</p>"
                f"<p>Your browser connects from <strong>{html.escape(address)}</strong>.</p>"
                '<form method="post"><button type="submit">Use this address</button></form>'
                "<p>This link works once and only for a few minutes.</p>"
            )
            return _page(start_response, "200 OK", "Use my current IP", body)
        if address is None:
            return _no_address(start_response)
        waiting = self.links.peek(token)
        if waiting is None:
            return _gone(start_response)
        refused = self.refusal(waiting, address)
        if refused is not None:
            body = (
                f"<p>{html.escape(refused)}</p><p>Nothing was requested, and this link still "
                "works, until it expires, from a network the policy allows.</p>"
            )
            return _page(start_response, "422 Unprocessable Entity", "Address not allowed", body)
        link = self.links.redeem(token)
        if link is None:
            return _gone(start_response)
        log.info("source link of %s used from %s", link.slack_user_id, address)
        outcome = self.complete(link, address)
        status = "200 OK" if outcome.ok else "422 Unprocessable Entity"
        title = "Request sent" if outcome.ok else "Request not sent"
        return _page(start_response, status, title, f"<p>{html.escape(outcome.text)}</p>")


def _gone(start_response: StartResponse) -> list[bytes]:
    return _page(
        start_response,
        "404 Not Found",
        "Link not valid",
        "<p>This link is unknown, already used or expired; nothing was changed. "
        "Run <code>/jit request</code> again in Slack.</p>",
    )


def _no_address(start_response: StartResponse) -> list[bytes]:
    return _page(
        start_response,
        "400 Bad Request",
        "Address unknown",
        "<p>jitbot could not tell which address your browser connects from; nothing was "
        "changed. Give it in Slack with <code>from &lt;ip&gt;</code>.</p>",
    )


def _page(start_response: StartResponse, status: str, title: str, body: str) -> list[bytes]:
    document = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>jitbot: {html.escape(title)}</title></head>"
        f"<body><h1>{html.escape(title)}</h1>{body}</body></html>"
    ).encode()
    start_response(
        status,
        [
            ("Content-Type", "text/html; charset=utf-8"),
            ("Content-Length", str(len(document))),
            ("Cache-Control", "no-store"),
            ("Referrer-Policy", "no-referrer"),
            ("X-Frame-Options", "DENY"),
            ("Content-Security-Policy", "default-src 'none'; form-action 'self'"),
        ],
    )
    return [document]
