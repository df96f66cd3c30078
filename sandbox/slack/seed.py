"""The default workspace the Slack sandbox starts with, and helpers to build other ones.

The seed is described in `sandbox.slack.server`'s module docstring. IDs follow Slack's
shapes (T/U/C/D/S/B prefixes) and match the samples in the project's shared payloads, so
a signed sample request refers to users and channels the sandbox knows.
"""

from __future__ import annotations

from typing import Any

TEAM_ID = "T0001ABCD"
TEAM_NAME = "example"
TEAM_DOMAIN = "example"
API_APP_ID = "A0JITBOT01"
BOT_ID = "B0JITBOT01"
BOT_USER_ID = "U0BOTUSER1"
BOT_USER_NAME = "jitbot"
DEFAULT_BOT_TOKEN = "xoxb-sandbox-0000000000-0000000000000-sandboxbottoken"
# An app-level token (Socket Mode): xapp-<version>-<app id>-<number>-<secret>.
DEFAULT_APP_TOKEN = "xapp-1-A0JITBOT01-0000000000000-sandboxapptoken"

# users:read.email is what makes users.info return profile.email.
DEFAULT_SCOPES = (
    "chat:write,chat:write.public,commands,im:write,users:read,users:read.email,usergroups:read"
)

REQUESTER = "U0REQ12345"
APPROVER_1 = "U0APPROVR1"
APPROVER_2 = "U0APPROVR2"
OUTSIDER = "U0OUTSIDER"
NO_EMAIL_USER = "U0NOEMAIL1"
DELETED_USER = "U0DELETED1"
GUEST_USER = "U0GUEST001"
# Each holds one kind of Azure access in the ARM stand-in's seed (sandbox/seeds/default.json).
READER_USER = "U0READER01"
SECURITY_READER_USER = "U0SECREAD1"
VM_CONTRIBUTOR_USER = "U0VMCONTR1"
DENIED_OWNER_USER = "U0OWNDENY1"
GROUP_MEMBER_USER = "U0GROUPED1"
UNKNOWN_EMAIL_USER = "U0NOMATCH1"

APPROVERS_CHANNEL = "C0OPS12345"
AUDIT_CHANNEL = "C0AUDIT001"
APPROVERS_GROUP = "S0APPROVRS"

_TZ = {
    "Europe/Berlin": ("Central European Time", 3600),
    "America/New_York": ("Eastern Standard Time", -18000),
    "Europe/London": ("Greenwich Mean Time", 0),
    "Asia/Tokyo": ("Japan Standard Time", 32400),
    "America/Los_Angeles": ("Pacific Standard Time", -28800),
}


def make_user(
    user_id: str,
    name: str,
    *,
    real_name: str | None = None,
    email: str | None = None,
    tz: str = "Europe/London",
    team_id: str = TEAM_ID,
    is_bot: bool = False,
    is_admin: bool = False,
    is_restricted: bool = False,
    is_ultra_restricted: bool = False,
    deleted: bool = False,
) -> dict[str, Any]:
    """Build a user object shaped like users.info's `user`.

    Deleted users come back without `tz*`, `is_admin` or `is_restricted` (Slack drops
    them), so code reading them must use `.get`.
    """
    real_name = real_name or name.capitalize()
    profile: dict[str, Any] = {
        "real_name": real_name,
        "real_name_normalized": real_name,
        "display_name": name,
        "display_name_normalized": name,
        "first_name": real_name.split(" ")[0],
        "status_text": "",
        "status_emoji": "",
        "team": team_id,
    }
    if email:
        profile["email"] = email

    user: dict[str, Any] = {
        "id": user_id,
        "team_id": team_id,
        "name": name,
        "deleted": deleted,
        "real_name": real_name,
        "profile": profile,
        "is_bot": is_bot,
        "is_app_user": False,
        "updated": 1700000000,
    }
    if deleted:
        return user

    tz_label, tz_offset = _TZ.get(tz, (tz, 0))
    user.update(
        {
            "tz": tz,
            "tz_label": tz_label,
            "tz_offset": tz_offset,
            "is_admin": is_admin,
            "is_owner": False,
            "is_primary_owner": False,
            "is_restricted": is_restricted,
            "is_ultra_restricted": is_ultra_restricted,
            "is_email_confirmed": email is not None,
        }
    )
    return user


def default_users() -> dict[str, dict[str, Any]]:
    """The seeded users, keyed by user id (a fresh copy on every call)."""
    bot = make_user(BOT_USER_ID, BOT_USER_NAME, real_name="JIT Bot", is_bot=True)
    bot["profile"]["bot_id"] = BOT_ID
    users = [
        make_user(
            REQUESTER,
            "alice",
            real_name="Alice Example",
            email="alice@example.com",
            tz="Europe/Berlin",
        ),
        make_user(
            APPROVER_1,
            "bob",
            real_name="Bob Example",
            email="bob@example.com",
            tz="America/New_York",
            is_admin=True,
        ),
        make_user(APPROVER_2, "carol", real_name="Carol Example", email="carol@example.com"),
        make_user(
            OUTSIDER, "eve", real_name="Eve Example", email="eve@example.com", tz="Asia/Tokyo"
        ),
        make_user(NO_EMAIL_USER, "dave", real_name="Dave Example"),
        make_user(
            DELETED_USER,
            "frank",
            real_name="Frank Former",
            email="frank@example.com",
            deleted=True,
        ),
        make_user(
            GUEST_USER,
            "grace",
            real_name="Grace Guest",
            email="grace@partner.example.net",
            tz="America/Los_Angeles",
            is_restricted=True,
        ),
        make_user(READER_USER, "rita", real_name="Rita Reader", email="rita@example.com"),
        make_user(SECURITY_READER_USER, "sam", real_name="Sam Security", email="sam@example.com"),
        make_user(
            VM_CONTRIBUTOR_USER, "victor", real_name="Victor Virtual", email="victor@example.com"
        ),
        make_user(DENIED_OWNER_USER, "oscar", real_name="Oscar Owner", email="oscar@example.com"),
        make_user(GROUP_MEMBER_USER, "gina", real_name="Gina Grouped", email="gina@example.com"),
        make_user(
            UNKNOWN_EMAIL_USER,
            "henry",
            real_name="Henry Contractor",
            email="henry@contractor.example.org",
        ),
        bot,
    ]
    return {user["id"]: user for user in users}


def default_channels() -> dict[str, str]:
    """The seeded channels: id -> name."""
    return {APPROVERS_CHANNEL: "ops-access", AUDIT_CHANNEL: "jit-audit"}


def default_usergroups() -> dict[str, list[str]]:
    """The seeded user groups: id -> member user ids."""
    return {APPROVERS_GROUP: [APPROVER_1, APPROVER_2]}
