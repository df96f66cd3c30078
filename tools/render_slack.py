"""Render what jitbot shows in Slack to PNG, for the README.

Runs a sandbox (the bot with the local Azure and Slack stand-ins, all on 127.0.0.1),
plays a request and its approval, opens the requester's App Home, and takes the Block
Kit the Slack stand-in recorded: the approval message as posted, the same message after
approval (``chat.update``), and the Home tab (``views.publish``). Each is rendered to an
HTML page approximating Slack's look, then to PNG by headless Chromium::

    python tools/render_slack.py                 # writes docs/images/*.png
    python tools/render_slack.py --html-only     # just the HTML, next to where PNGs go

Chromium (Debian: ``apt-get install chromium``) is started with a fresh profile and every
background network feature off, and only ever opens the local HTML file.

The rendering is an approximation: mrkdwn (bold, italic, code, strike, links, user and
channel mentions, dates), sections with fields and an accessory button, actions,
context, header and divider blocks. Anything else shows as a grey note naming its type.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "images"
WIDTH = 760

EMOJI = {
    "unlock": "🔓",
    "lock": "🔒",
    "white_check_mark": "✅",
    "no_entry": "⛔",
    "hourglass_flowing_sand": "⏳",
    "warning": "⚠️",
    "x": "❌",
    "alarm_clock": "⏰",
    "shield": "🛡️",
    "key": "🔑",
    "stopwatch": "⏱️",
    "information_source": "ℹ️",
}

STYLE = """
body { margin: 0; background: #f8f8f8; font: 15px/1.47 -apple-system, "Segoe UI",
  "Helvetica Neue", "DejaVu Sans", Arial, sans-serif; color: #1d1c1d; }
.frame { width: %(width)dpx; margin: 0; background: #fff; border-bottom: 1px solid #ddd; }
.bar { background: #3f0e40; color: #fff; padding: 10px 20px; font-weight: 700; }
.bar small { font-weight: 400; opacity: .75; margin-left: 8px; }
.message { display: flex; padding: 16px 20px 20px; }
.avatar { width: 36px; height: 36px; border-radius: 6px; background: #1d3b57; color: #fff;
  font-weight: 700; display: flex; align-items: center; justify-content: center;
  margin-right: 10px; flex: none; }
.body { flex: 1; min-width: 0; }
.name { font-weight: 900; } .app { font-size: 10px; background: #e8e8e8; color: #616061;
  border-radius: 2px; padding: 1px 3px; margin-left: 4px; font-weight: 700; }
.time { color: #616061; font-size: 12px; margin-left: 6px; }
.home { padding: 20px 24px 24px; }
.block { margin: 6px 0; }
.section { display: flex; justify-content: space-between; gap: 12px; }
.fields { display: grid; grid-template-columns: 1fr 1fr; gap: 8px 24px; margin-top: 8px; }
.context { color: #616061; font-size: 13px; }
.divider { border: 0; border-top: 1px solid #e8e8e8; margin: 12px 0; }
.header { font-size: 18px; font-weight: 900; }
.button { display: inline-block; border: 1px solid #bbb; border-radius: 4px; padding: 3px 12px;
  font-weight: 700; font-size: 14px; margin-right: 8px; background: #fff; white-space: nowrap; }
.button.primary { background: #007a5a; border-color: #007a5a; color: #fff; }
.button.danger { color: #e01e5a; border-color: #e01e5a; }
code { font: 12px Menlo, Consolas, "DejaVu Sans Mono", monospace; color: #e01e5a;
  background: #f6f6f6; border: 1px solid #ddd; border-radius: 3px; padding: 1px 3px; }
.mention { color: #1264a3; background: #e8f5fa; border-radius: 3px; padding: 0 2px; }
a { color: #1264a3; text-decoration: none; }
.unknown { color: #999; font-style: italic; }
"""


# ---- mrkdwn -----------------------------------------------------------------------------

_ANGLE = re.compile(r"<([^<>]+)>")


def mrkdwn(text: str, users: Mapping[str, str], channels: Mapping[str, str]) -> str:
    """Slack mrkdwn to HTML. Slack's own escapes (``&lt;`` …) come out as the characters
    they stand for, and everything is HTML-escaped, so no text can become markup."""
    out: list[str] = []
    position = 0
    for match in _ANGLE.finditer(text):
        out.append(_inline(text[position : match.start()]))
        out.append(_angle(match.group(1), users, channels))
        position = match.end()
    out.append(_inline(text[position:]))
    return "".join(out).replace("\n", "<br>")


def _angle(inner: str, users: Mapping[str, str], channels: Mapping[str, str]) -> str:
    target, _, label = inner.partition("|")
    if target.startswith("@"):
        name = users.get(target[1:], label or target[1:])
        return f'<span class="mention">@{_plain(name)}</span>'
    if target.startswith("#"):
        name = channels.get(target[1:], label or target[1:])
        return f'<span class="mention">#{_plain(name)}</span>'
    if target.startswith("!date^"):
        return _plain(label)
    if target.startswith("!"):
        return f'<span class="mention">@{_plain(target[1:])}</span>'
    shown = label or target
    return f'<a href="{html.escape(target, quote=True)}">{_plain(shown)}</a>'


def _plain(text: str) -> str:
    return html.escape(html.unescape(text))


_CODE = re.compile(r"`([^`\n]+)`")
_STYLES = (
    (re.compile(r"(?<![\w*])\*(?=\S)([^*\n]+?)(?<=\S)\*(?![\w*])"), "b"),
    (re.compile(r"(?<![\w_])_(?=\S)([^_\n]+?)(?<=\S)_(?![\w_])"), "i"),
    (re.compile(r"(?<![\w~])~(?=\S)([^~\n]+?)(?<=\S)~(?![\w~])"), "s"),
)
_EMOJI = re.compile(r":([a-z0-9_+-]+):")


def _inline(text: str) -> str:
    parts = _CODE.split(text)
    out = []
    for index, part in enumerate(parts):
        escaped = _plain(part)
        if index % 2:
            out.append(f"<code>{escaped}</code>")
            continue
        for pattern, tag in _STYLES:
            escaped = pattern.sub(lambda m, t=tag: f"<{t}>{m.group(1)}</{t}>", escaped)
        escaped = _EMOJI.sub(lambda m: EMOJI.get(m.group(1), m.group(0)), escaped)
        out.append(escaped)
    return "".join(out)


# ---- blocks -----------------------------------------------------------------------------


def text_object(obj: Mapping[str, Any] | None, users: Mapping[str, str], channels: Any) -> str:
    if not obj:
        return ""
    if obj.get("type") == "mrkdwn":
        return mrkdwn(str(obj.get("text", "")), users, channels)
    return _plain(str(obj.get("text", ""))).replace("\n", "<br>")


def button(element: Mapping[str, Any], users: Mapping[str, str], channels: Any) -> str:
    style = element.get("style", "")
    label = text_object(element.get("text"), users, channels)
    return f'<span class="button {html.escape(str(style))}">{label}</span>'


def render_blocks(
    blocks: list[Mapping[str, Any]], users: Mapping[str, str], channels: Mapping[str, str]
) -> str:
    """The HTML of a list of Block Kit blocks."""
    out = []
    for block in blocks:
        kind = block.get("type")
        if kind == "section":
            accessory = block.get("accessory") or {}
            side = button(accessory, users, channels) if accessory.get("type") == "button" else ""
            fields = "".join(
                f"<div>{text_object(f, users, channels)}</div>" for f in block.get("fields", [])
            )
            inner = f"<div>{text_object(block.get('text'), users, channels)}"
            inner += f'<div class="fields">{fields}</div></div>' if fields else "</div>"
            out.append(f'<div class="block section">{inner}{side}</div>')
        elif kind == "actions":
            buttons = "".join(
                button(e, users, channels)
                for e in block.get("elements", [])
                if e.get("type") == "button"
            )
            out.append(f'<div class="block actions">{buttons}</div>')
        elif kind == "context":
            parts = " ".join(text_object(e, users, channels) for e in block.get("elements", []))
            out.append(f'<div class="block context">{parts}</div>')
        elif kind == "divider":
            out.append('<hr class="divider">')
        elif kind == "header":
            out.append(
                f'<div class="block header">{text_object(block.get("text"), users, channels)}</div>'
            )
        else:
            out.append(f'<div class="block unknown">({html.escape(str(kind))} block)</div>')
    return "\n".join(out)


def message_page(
    blocks: list[Mapping[str, Any]],
    users: Mapping[str, str],
    channels: Mapping[str, str],
    channel: str,
    time_text: str = "",
) -> str:
    """A channel message by the bot, in a page of its own."""
    body = render_blocks(blocks, users, channels)
    channel_name = html.escape(channels.get(channel, channel))
    return _page(
        f'<div class="bar"># {channel_name}</div>'
        '<div class="message"><div class="avatar">J</div><div class="body">'
        f'<span class="name">jitbot</span><span class="app">APP</span>'
        f'<span class="time">{html.escape(time_text)}</span>{body}</div></div>'
    )


def home_page(
    view: Mapping[str, Any], users: Mapping[str, str], channels: Mapping[str, str]
) -> str:
    """An App Home tab, in a page of its own."""
    body = render_blocks(view.get("blocks", []), users, channels)
    return _page(
        '<div class="bar">jitbot<small>Home · Messages · About</small></div>'
        f'<div class="home">{body}</div>'
    )


def _page(content: str) -> str:
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8">'
        f"<style>{STYLE % {'width': WIDTH}}</style></head>"
        f'<body><div class="frame" id="frame">{content}</div>'
        "<script>document.title = String(document.getElementById('frame')"
        ".getBoundingClientRect().height)</script></body></html>"
    )


# ---- a sandbox run ----------------------------------------------------------------------


def record_sandbox_run() -> dict[str, Any]:
    """Play a request, its approval and an App Home visit; return the recorded Block Kit."""
    sys.path.insert(0, str(ROOT))
    from bot.sandbox import SandboxStack
    from sandbox.slack import seed, sender
    from tests.scenario.harness import Driver, wait_until

    with tempfile.TemporaryDirectory() as workdir:
        stack = SandboxStack(Path(workdir)).start()
        try:
            driver = Driver(stack)
            _status, reply = driver.command(
                "request vm-web01 22 2h from 203.0.113.7 because deploy hotfix for INC-4711"
            )
            request_id = int(reply["text"].split("#", 1)[1].split()[0])
            wait_until(lambda: driver.request(request_id).approval_ts, 30, "the approval")
            [posted] = stack.slack.calls("chat.postMessage")[:1]
            assert driver.click("jit_approve", request_id) == 200
            driver.wait_status(request_id, "active", timeout=30)
            driver.command("request vm-web01 3389 1h from 198.51.100.4 because RDP check")
            updated = wait_until(lambda: stack.slack.calls("chat.update"), 30, "the update")
            event = {"type": "app_home_opened", "user": seed.REQUESTER, "tab": "home"}
            event["channel"] = "D" + seed.REQUESTER[1:]
            body = sender.event_body(event)
            sender.post(driver.events_url, body, stack.signing_secret)
            published = wait_until(lambda: stack.slack.calls("views.publish"), 30, "the home")
        finally:
            stack.stop()
    users = {
        uid: str(user.get("real_name") or user["name"])
        for uid, user in seed.default_users().items()
    }
    return {
        "posted": posted["args"],
        "approved": updated[-1]["args"],
        "home": published[-1]["args"]["view"],
        "users": users,
        "channels": seed.default_channels(),
        "time": datetime.now(UTC).strftime("%H:%M"),
    }


def pages(recorded: Mapping[str, Any]) -> dict[str, str]:
    users, channels = recorded["users"], recorded["channels"]
    posted, approved = recorded["posted"], recorded["approved"]
    return {
        "approval-request": message_page(
            posted["blocks"], users, channels, posted["channel"], recorded.get("time", "")
        ),
        "approval-approved": message_page(
            approved["blocks"], users, channels, approved["channel"], recorded.get("time", "")
        ),
        "app-home": home_page(recorded["home"], users, channels),
    }


# ---- Chromium ---------------------------------------------------------------------------

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    raise SystemExit("render_slack: Chromium not found (Debian: apt-get install -y chromium)")


def screenshot(page: Path, png: Path) -> None:
    """Take a PNG of the local ``page``, cut to the height of its content."""
    browser = chromium()
    url = page.resolve().as_uri()
    with tempfile.TemporaryDirectory() as profile:
        flags = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
        dom = subprocess.run(
            [*flags, f"--window-size={WIDTH},2000", "--dump-dom", url],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
        found = re.search(r"<title>([\d.]+)</title>", dom)
        height = int(float(found.group(1))) + 1 if found else 600
        subprocess.run(
            [*flags, f"--window-size={WIDTH},{height}", f"--screenshot={png.resolve()}", url],
            capture_output=True,
            timeout=120,
            check=True,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=IMAGES, help="where to write (docs/images)")
    parser.add_argument(
        "--recorded",
        type=Path,
        help="render this JSON (posted, approved, home, users, channels) instead of a new run",
    )
    parser.add_argument("--save-recorded", type=Path, help="also save the recorded Block Kit")
    parser.add_argument("--html-only", action="store_true", help="write the HTML, no PNG")
    args = parser.parse_args(argv)

    if args.recorded:
        recorded = json.loads(args.recorded.read_text(encoding="utf-8"))
    else:
        recorded = record_sandbox_run()
    if args.save_recorded:
        args.save_recorded.write_text(json.dumps(recorded, indent=1), encoding="utf-8")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        for name, text in pages(recorded).items():
            page = (args.out if args.html_only else Path(scratch)) / f"{name}.html"
            page.write_text(text, encoding="utf-8")
            if args.html_only:
                print(page)
                continue
            png = args.out / f"{name}.png"
            screenshot(page, png)
            print(png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
