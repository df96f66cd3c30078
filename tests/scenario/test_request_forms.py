"""The request form, several VMs per request, saved sources, the "use my current IP" link
and source flags, over signed HTTP against the Slack and Azure stand-ins."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from slack_sdk.models.views import View
from sqlmodel import select

from bot import messages
from bot.sandbox import SandboxStack, seed_file
from jitcore.model import AccessRequest, RequestStatus
from sandbox.slack import seed, sender
from tests.scenario.harness import (
    APPROVAL_CHANNEL,
    APPROVER,
    REQUESTER,
    Driver,
    wait_until,
    write_policy,
)

TIMEOUT = 30.0
POLICY = """
policies:
  - name: web-admin
    vms: [vm-web01]
    ports:
      - {port: 22, protocol: Tcp, max_duration: 3h}
      - {port: 3389, protocol: Tcp, max_duration: 3h}
    min_duration: 1s
    allowed_sources: [203.0.113.0/24]
    approvers: [U0APPROVR1, U0APPROVR2]
    approval_channel: C0OPS12345
  - name: db-admin
    vms: [vm-db01]
    ports:
      - {port: 22, protocol: Tcp, max_duration: 3h}
      - {port: 5432, protocol: Tcp, max_duration: 3h}
    min_duration: 1s
    approvers: [U0APPROVR1, U0APPROVR2]
    approval_channel: C0OPS12345
"""
DB_VM_SCOPE = "resourceGroups/rg-jit-demo/providers/Microsoft.Compute/virtualMachines/vm-db01"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def requester_only_on_db01() -> dict[str, Any]:
    """The default subscription, but the requester's JIT role is on vm-db01 alone."""
    seed = json.loads(seed_file("default.json").read_text(encoding="utf-8"))
    for assignment in seed["roleAssignments"]:
        if assignment["principal"] == "alice@example.com":
            assignment["scope"] = DB_VM_SCOPE
    return seed


def start(directory: Path, **options: Any) -> SandboxStack:
    port = free_port()
    settings = {"public_url": f"http://127.0.0.1:{port}", **options.pop("settings", {})}
    return SandboxStack(
        directory,
        bot_port=port,
        policy_file=write_policy(directory, POLICY),
        settings=settings,
        **options,
    ).start()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[SandboxStack]:
    running = start(
        tmp_path,
        settings={
            "trusted_proxies": "127.0.0.1",
            "cloud_ranges": str(seed_file("cloud-ranges-azure.sample.json")),
        },
    )
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def driver(stack: SandboxStack) -> Driver:
    return Driver(stack)


def requests_in(stack: SandboxStack) -> list[AccessRequest]:
    assert stack.bot is not None
    with stack.bot.store.session() as session:
        return sorted(session.exec(select(AccessRequest)).all(), key=lambda r: r.id or 0)


def approval_posts(driver: Driver) -> list[dict[str, Any]]:
    return [c["args"] for c in driver.posts(APPROVAL_CHANNEL) if c["args"].get("blocks")]


def selected(*values: str) -> dict[str, Any]:
    return {
        "type": "multi_static_select",
        "selected_options": [
            {"text": {"type": "plain_text", "text": v}, "value": v} for v in values
        ],
    }


def submit_form(
    driver: Driver,
    vms: list[str],
    ports: list[str],
    duration: str,
    source: str | None,
    reason: str = "",
    user: str = REQUESTER,
) -> tuple[int, str]:
    values = {
        messages.FORM_VMS_BLOCK: {messages.FORM_VMS_INPUT: selected(*vms)},
        messages.FORM_PORTS_BLOCK: {messages.FORM_PORTS_INPUT: selected(*ports)},
        messages.FORM_DURATION_BLOCK: {messages.FORM_DURATION_INPUT: duration},
        messages.FORM_SOURCE_BLOCK: {
            messages.FORM_SOURCE_INPUT: {"type": "plain_text_input", "value": source}
        },
        messages.FORM_REASON_BLOCK: {messages.FORM_REASON_INPUT: reason},
    }
    body = sender.view_submission_body(messages.REQUEST_FORM_CALLBACK, values, user_id=user)
    status, _headers, text = sender.post(driver.events_url, body, driver.stack.signing_secret)
    return status, text


def fetch(url: str, method: str = "GET", forwarded: str | None = None) -> tuple[int, str]:
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    data = b"" if method == "POST" else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def link_of(reply: dict[str, Any]) -> str:
    [button] = [
        element
        for block in reply.get("blocks") or []
        for element in block.get("elements", [])
        if element.get("action_id") == messages.MY_IP_ACTION
    ]
    return str(button["url"])


# -- the form -------------------------------------------------------------------------------


def test_request_alone_opens_a_form_offering_only_the_vms_the_user_may_request(
    tmp_path: Path,
) -> None:
    stack = start(tmp_path, arm_seed=requester_only_on_db01())
    try:
        driver = Driver(stack)
        driver.command("source set 203.0.113.9")

        status, ack = driver.command("request")

        assert status == 200 and ack["text"] == messages.opening_form()
        [opened] = stack.slack.wait_for("views.open", timeout=TIMEOUT)
        [updated] = stack.slack.wait_for("views.update", timeout=TIMEOUT)
        assert updated["args"]["view_id"] == opened["response"]["view"]["id"]
        view = updated["args"]["view"]
        View(**view).validate_json()
        blocks = {b["block_id"]: b for b in view["blocks"]}
        vm_options = blocks[messages.FORM_VMS_BLOCK]["element"]["options"]
        assert [o["value"] for o in vm_options] == ["vm-db01"]
        port_options = blocks[messages.FORM_PORTS_BLOCK]["element"]["options"]
        assert [o["text"]["text"] for o in port_options] == ["22/Tcp", "5432/Tcp"]
        assert blocks[messages.FORM_SOURCE_BLOCK]["element"]["initial_value"] == "203.0.113.9/32"

        status, text = submit_form(driver, ["vm-db01"], ["5432"], "1h", "203.0.113.9", "migrate")

        assert status == 200 and text == ""
        [post] = wait_until(lambda: approval_posts(driver), TIMEOUT, "the approval message")
        [request] = requests_in(stack)
        assert (request.vm_name, request.ports, request.source_prefix) == (
            "vm-db01",
            "5432",
            "203.0.113.9/32",
        )
        assert request.reason == "migrate" and f"#{request.id}" in post["text"]
        wait_until(
            lambda: any(f"Request #{request.id}" in t for t in driver.dms_to(REQUESTER)),
            TIMEOUT,
            "the requester's confirmation",
        )
    finally:
        stack.stop()


def test_a_user_whose_roles_allow_no_request_gets_the_form_replaced_by_why(
    stack: SandboxStack, driver: Driver
) -> None:
    driver.command("request", user=seed.READER_USER)

    [updated] = stack.slack.wait_for("views.update", timeout=TIMEOUT)

    view = updated["args"]["view"]
    View(**view).validate_json()
    assert "submit" not in view
    assert view["blocks"][0]["text"]["text"] == messages.no_requestable_vms()


def test_a_forged_form_naming_a_vm_the_user_may_not_request_records_nothing(
    tmp_path: Path,
) -> None:
    stack = start(tmp_path, arm_seed=requester_only_on_db01())
    try:
        driver = Driver(stack)

        status, _text = submit_form(driver, ["vm-web01", "vm-db01"], ["22"], "1h", "203.0.113.9")

        assert status == 200
        [refusal] = wait_until(
            lambda: [t for t in driver.dms_to(REQUESTER) if "Nothing was requested" in t],
            TIMEOUT,
            "the refusal",
        )
        assert "*vm-web01*" in refusal and "*vm-db01*" not in refusal
        assert requests_in(stack) == []
    finally:
        stack.stop()


def test_form_errors_come_back_on_the_blocks_that_are_wrong_and_record_nothing(
    stack: SandboxStack, driver: Driver
) -> None:
    status, text = submit_form(driver, ["vm-web01", "vm-db01"], ["5432"], "9h", "0.0.0.0/0")

    assert status == 200
    answer = json.loads(text)
    assert answer["response_action"] == "errors"
    errors = answer["errors"]
    assert set(errors) == {
        messages.FORM_PORTS_BLOCK,
        messages.FORM_DURATION_BLOCK,
    }
    assert errors[messages.FORM_PORTS_BLOCK].startswith("vm-web01: port 5432 is not in the policy")
    assert "9h" in errors[messages.FORM_DURATION_BLOCK]

    _status, text = submit_form(driver, ["vm-db01"], ["22"], "1h", "0.0.0.0/0")
    errors = json.loads(text)["errors"]
    assert list(errors) == [messages.FORM_SOURCE_BLOCK]
    assert "`0.0.0.0/0` is not an allowed source" in errors[messages.FORM_SOURCE_BLOCK]
    assert requests_in(stack) == []


def test_an_expired_trigger_is_told_to_the_user_plainly(
    stack: SandboxStack, driver: Driver
) -> None:
    stack.slack.add_fault("views.open", error="expired_trigger_id")
    name = "form-expired"
    body = sender.slash_command_body(
        "request", user_id=REQUESTER, response_url=stack.slack.response_url(name)
    )
    sender.post(driver.events_url, body, stack.signing_secret)

    answer = driver.follow_up(name, timeout=TIMEOUT)

    assert answer["text"] == messages.form_expired()
    assert stack.slack.calls("views.update") == []


# -- several VMs ----------------------------------------------------------------------------


def test_several_vms_in_one_request_each_live_on_their_own(
    stack: SandboxStack, driver: Driver
) -> None:
    _status, reply = driver.command("request vm-web01,VM-DB01 22 2h from 203.0.113.7")

    assert reply["text"].startswith("2 requests for port 22 (2h), one per VM")
    web, db = requests_in(stack)
    assert (web.vm_name, db.vm_name) == ("vm-web01", "vm-db01")
    assert web.group_id is not None and web.group_id == db.group_id
    wait_until(lambda: len(approval_posts(driver)) == 2, TIMEOUT, "two approval messages")
    for request in (web, db):
        wait_until(lambda r=request: driver.request(r.id).approval_ts, TIMEOUT, "approval ts")
        assert driver.click("jit_approve", request.id, user=APPROVER) == 200
        driver.wait_status(request.id, RequestStatus.ACTIVE, timeout=TIMEOUT)

    _status, reply = driver.command(f"revoke {web.id}")

    driver.wait_status(web.id, RequestStatus.REVOKED, timeout=TIMEOUT)
    assert driver.request(db.id).status == RequestStatus.ACTIVE
    _status, reply = driver.command(f"extend {db.id} 3h")
    assert "until" in reply["text"] and driver.request(db.id).status == RequestStatus.ACTIVE


def test_one_wrong_vm_refuses_the_whole_request_with_a_suggestion(
    stack: SandboxStack, driver: Driver
) -> None:
    _status, reply = driver.command("request vm-web01,vm-db1 22 2h from 203.0.113.7")

    assert reply["text"].startswith(":no_entry: nothing was requested: ")
    assert (
        "vm-db1: no JIT policy covers a VM named `vm-db1`; did you mean `vm-db01`?"
        in (reply["text"])
    )
    assert requests_in(stack) == []


def test_rbac_is_checked_for_each_vm_before_anything_is_recorded(tmp_path: Path) -> None:
    stack = start(tmp_path, arm_seed=requester_only_on_db01())
    try:
        driver = Driver(stack)

        _status, reply = driver.command("request vm-db01,vm-web01 22 1h from 203.0.113.7")

        assert reply["text"].startswith(":no_entry: Nothing was requested:")
        assert "• *vm-web01*:" in reply["text"] and "*vm-db01*" not in reply["text"]
        assert requests_in(stack) == []
    finally:
        stack.stop()


# -- saved source ---------------------------------------------------------------------------


def test_a_saved_source_is_used_when_from_is_omitted_and_checked_by_each_policy(
    stack: SandboxStack, driver: Driver
) -> None:
    _status, reply = driver.command("source set 198.51.100.77")
    assert "Saved `198.51.100.77/32`" in reply["text"]
    _status, reply = driver.command("source")
    assert "`198.51.100.77/32`" in reply["text"]

    _status, reply = driver.command("request vm-web01 22 1h")
    assert "outside the sources this policy allows: 203.0.113.0/24" in reply["text"]
    assert requests_in(stack) == []

    _status, reply = driver.command("request vm-db01 22 1h because backup")
    assert reply["text"].startswith("Request #")
    [request] = requests_in(stack)
    assert request.source_prefix == "198.51.100.77/32"

    driver.command("source clear")
    _status, reply = driver.command("source")
    assert "no saved source" in reply["text"]


# -- "use my current IP" ------------------------------------------------------------------


def test_the_my_ip_link_records_the_forwarded_address_from_a_trusted_proxy_once(
    stack: SandboxStack, driver: Driver
) -> None:
    _status, reply = driver.command("request vm-db01 22 1h because hotfix")
    url = link_of(reply)
    assert url.startswith(stack.bot_url + "/my-ip/")
    assert requests_in(stack) == []

    status, page = fetch(url, forwarded="192.0.2.66, 198.51.100.50")
    assert status == 200 and "198.51.100.50" in page and "192.0.2.66" not in page
    assert requests_in(stack) == []

    status, page = fetch(url, "POST", forwarded="192.0.2.66, 198.51.100.50")

    assert status == 200 and "Sent to the approvers from 198.51.100.50/32" in page
    [request] = requests_in(stack)
    assert (request.vm_name, request.source_prefix, request.reason) == (
        "vm-db01",
        "198.51.100.50/32",
        "hotfix",
    )
    [post] = wait_until(lambda: approval_posts(driver), TIMEOUT, "the approval message")
    [flags] = [b for b in post["blocks"] if b.get("block_id", "").endswith("source-flags")]
    assert "a cloud provider's address (Azure AzureCloud.sample)" in json.dumps(flags)

    for method in ("POST", "GET"):
        status, page = fetch(url, method, forwarded="203.0.113.99")
        assert status == 404 and "unknown, already used or expired" in page
    status, _page = fetch(stack.bot_url + "/my-ip/" + "A" * 43, "POST")
    assert status == 404
    assert len(requests_in(stack)) == 1


def test_the_link_page_reports_a_recorded_request_even_when_slack_cannot_be_reached(
    stack: SandboxStack, driver: Driver
) -> None:
    _status, reply = driver.command("request vm-db01 22 1h")
    url = link_of(reply)
    stack.slack.add_fault("conversations.open", error="internal_error", times=None)

    status, page = fetch(url, "POST", forwarded="198.51.100.60")

    assert status == 200 and "Sent to the approvers from 198.51.100.60/32" in page
    [request] = requests_in(stack)
    assert request.source_prefix == "198.51.100.60/32"


def test_a_link_used_from_a_refused_address_still_works_from_an_allowed_one(
    stack: SandboxStack, driver: Driver
) -> None:
    _status, reply = driver.command("request vm-db01 22 1h")
    url = link_of(reply)

    status, page = fetch(url, "POST", forwarded="127.0.0.9")
    assert status == 422 and "loopback" in page
    assert requests_in(stack) == []

    status, page = fetch(url, "POST", forwarded="198.51.100.61")
    assert status == 200 and "Sent to the approvers from 198.51.100.61/32" in page
    [request] = requests_in(stack)
    assert request.source_prefix == "198.51.100.61/32"


def test_without_a_trusted_proxy_forwarded_for_is_ignored(tmp_path: Path) -> None:
    stack = start(tmp_path)
    try:
        driver = Driver(stack)
        _status, reply = driver.command("request vm-db01 22 1h")
        url = link_of(reply)

        status, page = fetch(url, forwarded="198.51.100.50")
        assert status == 200 and "127.0.0.1" in page and "198.51.100.50" not in page

        status, page = fetch(url, "POST", forwarded="198.51.100.50")

        assert status == 422 and "loopback" in page and "still works" in page
        assert requests_in(stack) == []
        # A refused address does not use the link up: from an allowed network it works.
        status, page = fetch(url, "POST")
        assert status == 422 and "loopback" in page
        assert requests_in(stack) == []
    finally:
        stack.stop()


# -- flags ------------------------------------------------------------------------------------


def test_approvers_see_a_shared_cgnat_source_flagged(stack: SandboxStack, driver: Driver) -> None:
    _status, reply = driver.command("request vm-db01 22 1h from 100.64.7.8")
    assert reply["text"].startswith("Request #")

    [post] = wait_until(lambda: approval_posts(driver), TIMEOUT, "the approval message")

    [flags] = [b for b in post["blocks"] if b.get("block_id", "").endswith("source-flags")]
    assert "`100.64.7.8/32` is a shared carrier-grade NAT address" in json.dumps(flags)

    _status, reply = driver.command("request vm-db01 5432 1h from 203.0.113.7")
    wait_until(lambda: len(approval_posts(driver)) == 2, TIMEOUT, "the second message")
    plain = approval_posts(driver)[1]
    assert not [b for b in plain["blocks"] if b.get("block_id", "").endswith("source-flags")]
