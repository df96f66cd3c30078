"""Slack user -> Entra ID user: mapping first, then the Slack email; refusals, never guesses.

Slack and Graph are fakes here; the cache is the real ``principal`` table on SQLite and
PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from slack_sdk.errors import SlackApiError

from bot.identity import IdentityRefused, IdentityResolver, IdentityUnavailable, Refusal
from jitcore.azure.identity import AmbiguousUser, DirectoryUser
from jitcore.db import Store, create_schema, make_engine
from jitcore.errors import CloudError
from jitcore.principals import PrincipalStore
from sandbox.slack.seed import make_user

ALICE_ID = "a11ce000-0000-4000-8000-000000000001"
DAVE_ID = "da5e0000-0000-4000-8000-000000000005"
START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


class FakeSlack:
    """users.info over a dict of users; counts calls; can fail."""

    def __init__(self, users: dict[str, dict[str, Any]]) -> None:
        self.users = users
        self.calls = 0
        self.error: str | None = None

    def users_info(self, user: str) -> dict[str, Any]:
        self.calls += 1
        if self.error or user not in self.users:
            error = self.error or "user_not_found"
            raise SlackApiError(error, {"ok": False, "error": error})
        return {"ok": True, "user": self.users[user]}


class FakeDirectory:
    def __init__(self, *users: DirectoryUser) -> None:
        self.users = list(users)
        self.lookups: list[str] = []
        self.fail = False

    def find_user(self, key: str) -> DirectoryUser | None:
        self.lookups.append(key)
        if self.fail:
            raise CloudError("Microsoft Graph did not answer: ServiceRequestError")
        found = [
            u
            for u in self.users
            if key.lower() in (u.object_id, u.user_principal_name.lower(), (u.mail or "").lower())
        ]
        if len(found) > 1:
            raise AmbiguousUser(f"{len(found)} users", code="Ambiguous")
        return found[0] if found else None


def directory_user(object_id: str, upn: str, enabled: bool = True) -> DirectoryUser:
    return DirectoryUser(object_id, upn, upn, upn.split("@")[0].title(), enabled)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def principals(database_url: str) -> Iterator[PrincipalStore]:
    engine = make_engine(database_url)
    create_schema(engine)
    yield PrincipalStore(Store(engine))
    engine.dispose()


@pytest.fixture
def slack() -> FakeSlack:
    return FakeSlack(
        {
            "U0ALICE": make_user("U0ALICE", "alice", email="alice@example.com"),
            "U0DAVE": make_user("U0DAVE", "dave"),
            "U0GUEST": make_user("U0GUEST", "grace", email="g@x.example", is_restricted=True),
            "U0SINGLE": make_user("U0SINGLE", "sid", email="s@x.example", is_ultra_restricted=True),
            "U0GONE": make_user("U0GONE", "frank", email="frank@example.com", deleted=True),
            "U0BOT": make_user("U0BOT", "robot", email="robot@example.com", is_bot=True),
        }
    )


@pytest.fixture
def directory() -> FakeDirectory:
    return FakeDirectory(
        directory_user(ALICE_ID, "alice@example.com"),
        directory_user(DAVE_ID, "dave@example.com"),
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


def resolver(
    slack: FakeSlack,
    directory: FakeDirectory,
    principals: PrincipalStore,
    clock: Clock,
    mappings: dict[str, str] | None = None,
) -> IdentityResolver:
    return IdentityResolver(
        slack,  # type: ignore[arg-type]
        directory,
        principals,
        mappings,
        ttl=timedelta(hours=1),
        clock=clock,
    )


def test_the_slack_email_finds_the_user_and_the_result_is_cached_with_its_source(
    slack: FakeSlack, directory: FakeDirectory, principals: PrincipalStore, clock: Clock
) -> None:
    found = resolver(slack, directory, principals, clock).resolve("U0ALICE")

    assert (found.object_id, found.upn, found.source) == (ALICE_ID, "alice@example.com", "email")
    row = principals.cached("U0ALICE")
    assert row is not None and row.source == "email" and row.resolved_at == START
    assert directory.lookups == ["alice@example.com"]


def test_a_cached_resolution_is_reused_until_it_is_older_than_the_ttl(
    slack: FakeSlack, directory: FakeDirectory, principals: PrincipalStore, clock: Clock
) -> None:
    identity = resolver(slack, directory, principals, clock)
    identity.resolve("U0ALICE")

    clock.now = START + timedelta(minutes=59)
    identity.resolve("U0ALICE")
    assert (slack.calls, len(directory.lookups)) == (1, 1)

    clock.now = START + timedelta(minutes=61)
    identity.resolve("U0ALICE")
    assert (slack.calls, len(directory.lookups)) == (2, 2)


def test_an_admin_mapping_comes_before_the_policy_file_and_the_email(
    slack: FakeSlack, directory: FakeDirectory, principals: PrincipalStore, clock: Clock
) -> None:
    identity = resolver(slack, directory, principals, clock, {"U0ALICE": "alice@example.com"})

    mapped = identity.map("U0ALICE", DAVE_ID, actor="U0ADMIN")

    assert (mapped.object_id, mapped.source) == (DAVE_ID, "admin")
    clock.now = START + timedelta(hours=2)
    assert identity.resolve("U0ALICE").source == "admin"
    stored = principals.mapping("U0ALICE")
    assert stored is not None and (stored.target, stored.set_by) == (DAVE_ID, "U0ADMIN")


def test_the_policy_file_mapping_is_used_when_no_admin_mapped_the_user(
    slack: FakeSlack, directory: FakeDirectory, principals: PrincipalStore, clock: Clock
) -> None:
    identity = resolver(slack, directory, principals, clock, {"U0DAVE": "dave@example.com"})

    found = identity.resolve("U0DAVE")

    assert (found.object_id, found.source) == (DAVE_ID, "policy")


def test_unmapping_falls_back_to_the_email_at_once(
    slack: FakeSlack, directory: FakeDirectory, principals: PrincipalStore, clock: Clock
) -> None:
    identity = resolver(slack, directory, principals, clock)
    identity.map("U0ALICE", DAVE_ID, actor="U0ADMIN")

    assert identity.unmap("U0ALICE") is True
    assert identity.resolve("U0ALICE").object_id == ALICE_ID
    assert identity.unmap("U0ALICE") is False


@pytest.mark.parametrize(
    ("user", "reason"),
    [
        pytest.param("U0DAVE", Refusal.NO_EMAIL, id="no-email"),
        pytest.param("U0GUEST", Refusal.GUEST, id="guest"),
        pytest.param("U0SINGLE", Refusal.GUEST, id="single-channel-guest"),
        pytest.param("U0GONE", Refusal.DEACTIVATED, id="deactivated"),
        pytest.param("U0BOT", Refusal.BOT, id="bot"),
        pytest.param("U0NOBODY", Refusal.UNKNOWN_USER, id="unknown"),
    ],
)
def test_users_jitbot_cannot_tie_to_a_person_are_refused_and_nothing_is_cached(
    slack: FakeSlack,
    directory: FakeDirectory,
    principals: PrincipalStore,
    clock: Clock,
    user: str,
    reason: Refusal,
) -> None:
    with pytest.raises(IdentityRefused) as refused:
        resolver(slack, directory, principals, clock).resolve(user)

    assert refused.value.reason == reason
    assert principals.cached(user) is None


def test_guests_are_refused_even_when_an_admin_mapped_them(
    slack: FakeSlack, directory: FakeDirectory, principals: PrincipalStore, clock: Clock
) -> None:
    principals.set_mapping("U0GUEST", "alice@example.com", "U0ADMIN", START)

    with pytest.raises(IdentityRefused, match="guest"):
        resolver(slack, directory, principals, clock).resolve("U0GUEST")


def test_an_email_slack_marks_unconfirmed_is_refused(
    slack: FakeSlack, directory: FakeDirectory, principals: PrincipalStore, clock: Clock
) -> None:
    slack.users["U0ALICE"]["is_email_confirmed"] = False

    with pytest.raises(IdentityRefused) as refused:
        resolver(slack, directory, principals, clock).resolve("U0ALICE")

    assert refused.value.reason == Refusal.UNCONFIRMED_EMAIL
    assert directory.lookups == []


def test_an_email_no_directory_user_has_is_refused_not_guessed(
    slack: FakeSlack, directory: FakeDirectory, principals: PrincipalStore, clock: Clock
) -> None:
    slack.users["U0ALICE"]["profile"]["email"] = "alice@elsewhere.example"

    with pytest.raises(IdentityRefused) as refused:
        resolver(slack, directory, principals, clock).resolve("U0ALICE")

    assert (refused.value.reason, refused.value.target) == (
        Refusal.NO_PRINCIPAL,
        "alice@elsewhere.example",
    )
    assert directory.lookups == ["alice@elsewhere.example"]


def test_an_address_several_directory_users_answer_to_is_refused(
    slack: FakeSlack, directory: FakeDirectory, principals: PrincipalStore, clock: Clock
) -> None:
    directory.users.append(
        directory_user("0a5ca400-0000-4000-8000-000000000009", "alice@example.com")
    )

    with pytest.raises(IdentityRefused) as refused:
        resolver(slack, directory, principals, clock).resolve("U0ALICE")

    assert refused.value.reason == Refusal.AMBIGUOUS


def test_a_disabled_directory_account_is_refused(
    slack: FakeSlack, principals: PrincipalStore, clock: Clock
) -> None:
    directory = FakeDirectory(directory_user(ALICE_ID, "alice@example.com", enabled=False))

    with pytest.raises(IdentityRefused) as refused:
        resolver(slack, directory, principals, clock).resolve("U0ALICE")

    assert refused.value.reason == Refusal.DISABLED


def test_an_admin_mapping_to_an_unknown_principal_is_refused_and_not_stored(
    slack: FakeSlack, directory: FakeDirectory, principals: PrincipalStore, clock: Clock
) -> None:
    with pytest.raises(IdentityRefused) as refused:
        resolver(slack, directory, principals, clock).map("U0DAVE", "nobody@example.com", "U0A")

    assert refused.value.reason == Refusal.NO_PRINCIPAL
    assert principals.mapping("U0DAVE") is None


def test_slack_or_graph_failing_is_unavailable_not_refused(
    slack: FakeSlack, directory: FakeDirectory, principals: PrincipalStore, clock: Clock
) -> None:
    identity = resolver(slack, directory, principals, clock)
    slack.error = "ratelimited"
    with pytest.raises(IdentityUnavailable):
        identity.resolve("U0ALICE")

    slack.error = None
    directory.fail = True
    with pytest.raises(IdentityUnavailable):
        identity.resolve("U0ALICE")
    assert principals.cached("U0ALICE") is None
