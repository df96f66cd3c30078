"""Who a Slack user is in Microsoft Entra ID.

In order: an admin's mapping (``/jit admin map``), else the policy file's ``principals``
map, else the email on the Slack profile looked up in Entra ID (``mail`` or
``userPrincipalName``). Nothing else: no guess by display name, no fallback domain. An
email that is missing, unconfirmed or matches no user, or matches several, is a refusal
that tells the user how to get mapped.

``users.info`` returns ``profile.email`` only with the ``users:read.email`` scope, and
Slack only shows addresses the user confirmed; a user object that still says
``is_email_confirmed: false`` is refused all the same. Deactivated users, guests
(``is_restricted``, ``is_ultra_restricted``), people from another organisation
(``is_stranger``) and bots are refused whatever their mapping says.

A resolution is kept in the ``principal`` table with its source and time, and reused
for ``ttl``; after that Slack and Entra ID are asked again, so a deactivation or a new
mapping in the directory takes effect within ``ttl``.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from jitcore.azure.identity import AmbiguousUser, DirectoryUser
from jitcore.errors import JitError, NotAuthorized
from jitcore.model import Principal, utcnow
from jitcore.principals import PrincipalStore

log = logging.getLogger(__name__)


class Refusal(enum.StrEnum):
    UNKNOWN_USER = "unknown_user"
    DEACTIVATED = "deactivated"
    BOT = "bot"
    GUEST = "guest"
    EXTERNAL = "external"
    NO_EMAIL = "no_email"
    UNCONFIRMED_EMAIL = "unconfirmed_email"
    NO_PRINCIPAL = "no_principal"
    AMBIGUOUS = "ambiguous"
    DISABLED = "disabled"


class IdentityRefused(NotAuthorized):
    """The Slack user cannot be tied to an Entra ID user; ``reason`` says why.

    ``target`` is what was looked up (an email, a UPN or an object id) and ``source``
    where it came from, so the message can say what to fix.
    """

    def __init__(self, user_id: str, reason: Refusal, target: str = "", source: str = "") -> None:
        super().__init__(f"{user_id}: {reason}")
        self.user_id = user_id
        self.reason = reason
        self.target = target
        self.source = source


class IdentityUnavailable(JitError):
    """Slack or Entra ID did not answer; nothing is assumed about the user."""


class Directory(Protocol):
    def find_user(self, key: str) -> DirectoryUser | None: ...


@dataclass(frozen=True)
class ResolvedPrincipal:
    slack_user_id: str
    object_id: str
    upn: str
    source: str
    resolved_at: datetime


class IdentityResolver:
    def __init__(
        self,
        client: WebClient,
        directory: Directory,
        principals: PrincipalStore,
        policy_mappings: Mapping[str, str] | None = None,
        ttl: timedelta = timedelta(hours=1),
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.client = client
        self.directory = directory
        self.principals = principals
        self.policy_mappings = dict(policy_mappings or {})
        self.ttl = ttl
        self.clock = clock

    def resolve(self, user_id: str) -> ResolvedPrincipal:
        """The Entra ID user behind ``user_id``.

        Raises:
            IdentityRefused: the user may not be tied to anyone; the reason says why.
            IdentityUnavailable: Slack or Entra ID failed; try again later.
        """
        cached = self.principals.cached(user_id)
        now = self.clock()
        if cached is not None and cached.resolved_at and now - cached.resolved_at < self.ttl:
            return _resolved(cached)
        member = self._slack_member(user_id)
        source, target = self._target(user_id, member)
        user = self._lookup(user_id, target, source)
        return self._remember(user_id, user, source, now)

    def map(self, user_id: str, target: str, actor: str) -> ResolvedPrincipal:
        """Tie ``user_id`` to the Entra ID user ``target`` (UPN or object id), checked first."""
        self._slack_member(user_id)
        user = self._lookup(user_id, target, "admin")
        now = self.clock()
        self.principals.set_mapping(user_id, target, actor, now)
        log.info(
            "%s mapped %s to %s (%s)", actor, user_id, user.user_principal_name, user.object_id
        )
        return self._remember(user_id, user, "admin", now)

    def unmap(self, user_id: str) -> bool:
        """Remove an admin mapping; the next resolution uses the policy file or the email."""
        removed = self.principals.remove_mapping(user_id)
        self.principals.forget(user_id)
        return removed

    def _slack_member(self, user_id: str) -> dict[str, Any]:
        try:
            user = self.client.users_info(user=user_id)["user"]
        except SlackApiError as exc:
            error = exc.response.get("error") if exc.response is not None else None
            if error in ("user_not_found", "user_not_visible"):
                raise IdentityRefused(user_id, Refusal.UNKNOWN_USER) from None
            raise IdentityUnavailable(f"Slack did not say who {user_id} is: {error}") from None
        if user.get("deleted"):
            raise IdentityRefused(user_id, Refusal.DEACTIVATED)
        if user.get("is_bot") or user.get("is_app_user"):
            raise IdentityRefused(user_id, Refusal.BOT)
        if user.get("is_restricted") or user.get("is_ultra_restricted"):
            raise IdentityRefused(user_id, Refusal.GUEST)
        if user.get("is_stranger"):
            raise IdentityRefused(user_id, Refusal.EXTERNAL)
        return dict(user)

    def _target(self, user_id: str, member: Mapping[str, Any]) -> tuple[str, str]:
        mapping = self.principals.mapping(user_id)
        if mapping is not None:
            return "admin", mapping.target
        if user_id in self.policy_mappings:
            return "policy", self.policy_mappings[user_id]
        email = (member.get("profile") or {}).get("email")
        if not email:
            raise IdentityRefused(user_id, Refusal.NO_EMAIL, source="email")
        if member.get("is_email_confirmed") is False:
            raise IdentityRefused(user_id, Refusal.UNCONFIRMED_EMAIL, email, "email")
        return "email", str(email)

    def _lookup(self, user_id: str, target: str, source: str) -> DirectoryUser:
        try:
            user = self.directory.find_user(target)
        except AmbiguousUser:
            raise IdentityRefused(user_id, Refusal.AMBIGUOUS, target, source) from None
        except JitError as exc:
            raise IdentityUnavailable(f"Entra ID lookup failed: {exc.message}") from None
        if user is None:
            raise IdentityRefused(user_id, Refusal.NO_PRINCIPAL, target, source)
        if not user.account_enabled:
            raise IdentityRefused(user_id, Refusal.DISABLED, user.user_principal_name, source)
        return user

    def _remember(
        self, user_id: str, user: DirectoryUser, source: str, at: datetime
    ) -> ResolvedPrincipal:
        row = Principal(
            slack_user_id=user_id,
            object_id=user.object_id,
            upn=user.user_principal_name,
            source=source,
            resolved_at=at,
        )
        self.principals.remember(row)
        log.info("Slack user %s is %s (from %s)", user_id, user.object_id, source)
        return _resolved(row)


def _resolved(row: Principal) -> ResolvedPrincipal:
    assert row.resolved_at is not None
    return ResolvedPrincipal(row.slack_user_id, row.object_id, row.upn, row.source, row.resolved_at)
