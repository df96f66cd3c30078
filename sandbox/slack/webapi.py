"""The Web API methods of the Slack sandbox, without HTTP.

`Workspace` holds the state (messages, DMs, views) and answers a method call with the
JSON body Slack would return. Errors are raised as `SlackError` and turned into
`{"ok": false, "error": ...}` by the caller, as Slack answers them with HTTP 200.
"""

from __future__ import annotations

import copy
import hashlib
import threading
from collections.abc import Callable, Mapping
from typing import Any

from sandbox.slack import seed

MAX_BLOCKS = 50
MAX_SECTION_TEXT = 3000
MAX_TEXT = 40_000
_FIRST_TS = 1_700_000_000_000_100  # microseconds: "1700000000.000100"
_TS_STEP = 100

Args = dict[str, Any]
Body = dict[str, Any]


class SlackError(Exception):
    """A Web API error answer: `{"ok": false, "error": error, **extra}`."""

    def __init__(self, error: str, **extra: Any) -> None:
        super().__init__(error)
        self.error = error
        self.extra = extra

    def body(self) -> Body:
        return {"ok": False, "error": self.error, **self.extra}


def _invalid_arguments(message: str) -> SlackError:
    return SlackError("invalid_arguments", response_metadata={"messages": [f"[ERROR] {message}"]})


def _invalid_blocks(message: str, pointer: str) -> SlackError:
    text = f"{message} [json-pointer:{pointer}]"
    return SlackError(
        "invalid_blocks", errors=[text], response_metadata={"messages": [f"[ERROR] {text}"]}
    )


def _required(args: Args, name: str) -> Any:
    value = args.get(name)
    if value in (None, ""):
        raise _invalid_arguments(f"missing required field: {name}")
    return value


class Workspace:
    """One Slack workspace: seeded users, channels and groups, plus what the bot posted.

    Thread-safe: every method call runs under one lock.
    """

    def __init__(
        self,
        users: Mapping[str, Mapping[str, Any]] | None = None,
        channels: Mapping[str, str] | None = None,
        usergroups: Mapping[str, list[str]] | None = None,
        scopes: str = seed.DEFAULT_SCOPES,
    ) -> None:
        self.users = {
            uid: _normalise_user(uid, u)
            for uid, u in (seed.default_users() if users is None else users).items()
        }
        self.channels = dict(channels if channels is not None else seed.default_channels())
        self.usergroups = {
            k: list(v)
            for k, v in (seed.default_usergroups() if usergroups is None else usergroups).items()
        }
        self.scopes = scopes
        self._lock = threading.Lock()
        self._messages: dict[str, list[Body]] = {}
        self._dms: dict[str, str] = {}
        self._views: dict[str, Body] = {}
        self._home_views: dict[str, str] = {}
        self._next_ts = _FIRST_TS
        self._next_view = 1
        self.methods: dict[str, Callable[[Args], Body]] = {
            "api.test": self._api_test,
            "auth.test": self._auth_test,
            "chat.postMessage": self._chat_post_message,
            "chat.update": self._chat_update,
            "chat.postEphemeral": self._chat_post_ephemeral,
            "conversations.open": self._conversations_open,
            "users.info": self._users_info,
            "usergroups.users.list": self._usergroups_users_list,
            "views.open": self._views_open,
            "views.update": self._views_update,
            "views.publish": self._views_publish,
        }

    def call(self, method: str, args: Args) -> Body:
        """Answer one Web API call; raises SlackError for an error answer."""
        handler = self.methods.get(method)
        if handler is None:
            raise SlackError("unknown_method", req_method=method)
        with self._lock:
            return handler(args)

    def messages(self, channel: str) -> list[Body]:
        """The channel's messages as they are now, oldest first, thread replies included."""
        with self._lock:
            return copy.deepcopy(self._messages.get(channel, []))

    def all_messages(self) -> dict[str, list[Body]]:
        with self._lock:
            return copy.deepcopy(self._messages)

    def dm_channel(self, user_id: str) -> str:
        """The DM channel id conversations.open gives for user_id (stable per user)."""
        return "D" + user_id[1:]

    # ---- helpers -------------------------------------------------------------------

    def _new_ts(self) -> str:
        value = self._next_ts
        self._next_ts += _TS_STEP
        return f"{value // 1_000_000}.{value % 1_000_000:06d}"

    def _channel_id(self, args: Args) -> str:
        """Resolve `channel` as Slack does: an id, a #name, or a user id (their DM)."""
        channel = str(_required(args, "channel"))
        if channel in self.channels or channel in self._dms.values():
            return channel
        for channel_id, name in self.channels.items():
            if channel.lstrip("#") == name:
                return channel_id
        user_id = "U" + channel[1:] if channel.startswith("D") else channel
        if user_id in self.users and not self.users[user_id].get("deleted"):
            return self._open_dm(user_id)
        raise SlackError("channel_not_found")

    def _open_dm(self, user_id: str) -> str:
        channel = self._dms.get(user_id)
        if channel is None:
            channel = self.dm_channel(user_id)
            self._dms[user_id] = channel
        return channel

    def _user(self, user_id: str) -> Body:
        user = self.users.get(user_id)
        if user is None:
            raise SlackError("user_not_found")
        return user

    def _find_message(self, channel: str, ts: str) -> Body:
        for message in self._messages.get(channel, []):
            if message["ts"] == ts:
                return message
        raise SlackError("message_not_found")

    # ---- methods -------------------------------------------------------------------

    def _api_test(self, args: Args) -> Body:
        return {"ok": True, "args": {k: v for k, v in args.items() if k != "token"}}

    def _auth_test(self, args: Args) -> Body:
        return {
            "ok": True,
            "url": f"https://{seed.TEAM_DOMAIN}.slack.com/",
            "team": seed.TEAM_NAME,
            "user": seed.BOT_USER_NAME,
            "team_id": seed.TEAM_ID,
            "user_id": seed.BOT_USER_ID,
            "bot_id": seed.BOT_ID,
            "is_enterprise_install": False,
        }

    def _chat_post_message(self, args: Args) -> Body:
        channel = self._channel_id(args)
        content = _message_content(args)
        message = {
            "user": seed.BOT_USER_ID,
            "type": "message",
            "subtype": "bot_message",
            "ts": self._new_ts(),
            "bot_id": seed.BOT_ID,
            "app_id": seed.API_APP_ID,
            "team": seed.TEAM_ID,
            **content,
        }
        thread_ts = args.get("thread_ts")
        if thread_ts:
            message["thread_ts"] = str(thread_ts)
            self._note_reply(channel, str(thread_ts), message["ts"])

        self._messages.setdefault(channel, []).append(message)
        return {
            "ok": True,
            "channel": channel,
            "ts": message["ts"],
            "message": copy.deepcopy(message),
        }

    def _note_reply(self, channel: str, parent_ts: str, reply_ts: str) -> None:
        """Mark the thread's parent as Slack does; a reply to an unknown ts is still posted."""
        for message in self._messages.get(channel, []):
            if message["ts"] == parent_ts:
                message["thread_ts"] = parent_ts
                message["reply_count"] = message.get("reply_count", 0) + 1
                message["latest_reply"] = reply_ts
                return

    def _chat_update(self, args: Args) -> Body:
        channel = self._channel_id(args)
        message = self._find_message(channel, str(_required(args, "ts")))
        content = _message_content(args, require_content=False)
        message.update(content)
        message["edited"] = {"user": seed.BOT_USER_ID, "ts": self._new_ts()}
        return {
            "ok": True,
            "channel": channel,
            "ts": message["ts"],
            "text": message.get("text", ""),
            "message": copy.deepcopy(message),
        }

    def _chat_post_ephemeral(self, args: Args) -> Body:
        self._channel_id(args)
        self._user(str(_required(args, "user")))
        _message_content(args)
        return {"ok": True, "message_ts": self._new_ts()}

    def _conversations_open(self, args: Args) -> Body:
        users = [u.strip() for u in str(_required(args, "users")).split(",") if u.strip()]
        for user_id in users:
            self._user(user_id)
        if len(users) == 1:
            already_open = users[0] in self._dms
            channel = {"id": self._open_dm(users[0])}
            return {
                "ok": True,
                "no_op": already_open,
                "already_open": already_open,
                "channel": channel,
            }

        digest = hashlib.sha1(",".join(sorted(users)).encode()).hexdigest()[:10].upper()
        channel_id = "G" + digest
        self._dms.setdefault(",".join(sorted(users)), channel_id)
        return {"ok": True, "channel": {"id": channel_id}}

    def _users_info(self, args: Args) -> Body:
        user = copy.deepcopy(self._user(str(_required(args, "user"))))
        if "users:read.email" not in self.scopes.split(","):
            user["profile"].pop("email", None)
        return {"ok": True, "user": user}

    def _usergroups_users_list(self, args: Args) -> Body:
        group = str(_required(args, "usergroup"))
        if group not in self.usergroups:
            raise SlackError("no_such_subteam")
        return {"ok": True, "users": list(self.usergroups[group])}

    def _views_open(self, args: Args) -> Body:
        _required(args, "trigger_id")
        view = self._new_view(_view_arg(args))
        return {"ok": True, "view": copy.deepcopy(view)}

    def _views_update(self, args: Args) -> Body:
        view = self._existing_view(args)
        expected_hash = args.get("hash")
        if expected_hash and expected_hash != view["hash"]:
            raise SlackError("hash_conflict")

        new_view = self._new_view(_view_arg(args), view_id=view["id"])
        new_view["root_view_id"] = view["root_view_id"]
        return {"ok": True, "view": copy.deepcopy(new_view)}

    def _existing_view(self, args: Args) -> Body:
        view_id = args.get("view_id")
        external_id = args.get("external_id")
        if not view_id and not external_id:
            raise _invalid_arguments("view_id or external_id is required")
        for view in self._views.values():
            if view["id"] == view_id or (external_id and view["external_id"] == external_id):
                return view
        raise SlackError("not_found")

    def _views_publish(self, args: Args) -> Body:
        user_id = str(_required(args, "user_id"))
        self._user(user_id)
        view_arg = _view_arg(args)
        if view_arg.get("type") != "home":
            raise _invalid_arguments("must be 'home' [json-pointer:/view/type]")

        view = self._new_view(view_arg, view_id=self._home_views.get(user_id))
        self._home_views[user_id] = view["id"]
        return {"ok": True, "view": copy.deepcopy(view)}

    def _new_view(self, view_arg: Body, view_id: str | None = None) -> Body:
        _check_blocks(view_arg.get("blocks", []), "/view/blocks", limit=100)
        if view_id is None:
            view_id = f"V{self._next_view:010d}"
        view = {
            "id": view_id,
            "team_id": seed.TEAM_ID,
            "type": view_arg.get("type", "modal"),
            "blocks": copy.deepcopy(view_arg.get("blocks", [])),
            "private_metadata": view_arg.get("private_metadata", ""),
            "callback_id": view_arg.get("callback_id", ""),
            "state": {"values": {}},
            "hash": f"{1_700_000_000 + self._next_view}.sandbox{self._next_view:02d}",
            "title": view_arg.get("title"),
            "clear_on_close": bool(view_arg.get("clear_on_close", False)),
            "notify_on_close": bool(view_arg.get("notify_on_close", False)),
            "close": view_arg.get("close"),
            "submit": view_arg.get("submit"),
            "previous_view_id": None,
            "root_view_id": view_id,
            "app_id": seed.API_APP_ID,
            "external_id": view_arg.get("external_id", ""),
            "app_installed_team_id": seed.TEAM_ID,
            "bot_id": seed.BOT_ID,
        }
        self._next_view += 1
        self._views[view_id] = view
        return view


def _normalise_user(user_id: str, user: Mapping[str, Any]) -> Body:
    normalised = copy.deepcopy(dict(user))
    normalised.setdefault("id", user_id)
    normalised.setdefault("team_id", seed.TEAM_ID)
    normalised.setdefault("profile", {})
    return normalised


def _view_arg(args: Args) -> Body:
    view = _required(args, "view")
    if not isinstance(view, dict):
        raise _invalid_arguments("view must be a JSON object [json-pointer:/view]")
    return view


def _message_content(args: Args, require_content: bool = True) -> Body:
    """The text/blocks/attachments of a message, checked against Slack's limits."""
    content: Body = {}
    if "text" in args and args["text"] is not None:
        # Slack keeps the first 40,000 characters of a longer text.
        content["text"] = str(args["text"])[:MAX_TEXT]
    if args.get("blocks") is not None:
        _check_blocks(args["blocks"], "/blocks", limit=MAX_BLOCKS)
        content["blocks"] = copy.deepcopy(args["blocks"])
    if args.get("attachments") is not None:
        if not isinstance(args["attachments"], list):
            raise SlackError("invalid_attachments")
        content["attachments"] = copy.deepcopy(args["attachments"])
    if not require_content:
        return content
    if not (content.get("text") or content.get("blocks") or content.get("attachments")):
        raise SlackError("no_text")
    content.setdefault("text", "")
    return content


def _check_blocks(blocks: Any, pointer: str, limit: int) -> None:
    if not isinstance(blocks, list) or not all(isinstance(b, dict) for b in blocks):
        raise SlackError("invalid_blocks_format")
    if len(blocks) > limit:
        raise _invalid_blocks(f"must provide no more than {limit} items", pointer)
    for index, block in enumerate(blocks):
        if "type" not in block:
            raise _invalid_blocks("missing required field: type", f"{pointer}/{index}")
        text = block.get("text")
        if block["type"] == "section" and isinstance(text, dict):
            if len(str(text.get("text", ""))) > MAX_SECTION_TEXT:
                raise _invalid_blocks(
                    f"must be less than {MAX_SECTION_TEXT + 1} characters",
                    f"{pointer}/{index}/text/text",
                )
