"""Several VMs per request, "did you mean", saved sources, one-time source links, the
address a browser comes from, source flags for approvers, and the request form."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from slack_sdk.models.blocks import Block
from slack_sdk.models.views import View
from sqlmodel import select

from bot import messages
from bot.cli import _with_links
from bot.commands import (
    CommandError,
    RequestCommand,
    RequestFormCommand,
    SourceCommand,
    parse_command,
)
from bot.myip import (
    LinkOutcome,
    SourceLinkPages,
    SourceLinks,
    client_address,
    hash_token,
    parse_proxies,
)
from bot.requesting import Draft, RequestDesk
from jitcore.db import Store, create_schema, make_engine
from jitcore.engine import Engine, PolicySet
from jitcore.errors import RequestRejected, UnknownVm
from jitcore.model import AccessRequest, AuditEvent, SourceLink
from jitcore.policy import check_request, closest_vm_name, parse_policies
from jitcore.source_flags import (
    CloudRangesError,
    SourceFlagger,
    load_cloud_ranges,
    parse_cloud_ranges,
)
from tests.fakes import FakeCloud, RecordingNotifier

SEEDS = Path(__file__).resolve().parents[2] / "sandbox" / "seeds"
SUBSCRIPTION_VM = (
    "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-jit-demo"
    "/providers/Microsoft.Compute/virtualMachines/vm-web01"
)
POLICIES = {
    "policies": [
        {
            "name": "web-admin",
            "vms": ["vm-web01", "vm-db01"],
            "ports": [{"port": 22, "max_duration": "3h"}, {"port": 3389, "max_duration": "1h"}],
            "min_duration": "1s",
            "approvers": ["U0APPROVR1"],
            "approval_channel": "C0OPS12345",
        },
        {
            "name": "private-only-public",
            "vms": ["vm-app01"],
            "ports": [{"port": 443, "max_duration": "2h"}],
            "min_duration": "1s",
            "allow_private_sources": False,
            "approvers": ["U0APPROVR1"],
            "approval_channel": "C0OPS12345",
        },
    ]
}


class ManualClock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def store(database_url: str):
    store = Store(make_engine(database_url))
    create_schema(store.engine)
    yield store
    store.engine.dispose()


@pytest.fixture
def engine(store: Store) -> Engine:
    policies = parse_policies(POLICIES)
    versions = {p.name: 1 for p in policies}
    return Engine(store, PolicySet(policies, versions), FakeCloud(), RecordingNotifier())


def all_requests(store: Store) -> list[AccessRequest]:
    with store.session() as session:
        return list(session.exec(select(AccessRequest)).all())


# -- grammar ------------------------------------------------------------------------------


def test_request_alone_asks_for_the_form() -> None:
    assert parse_command("request") == RequestFormCommand()
    assert parse_command("  REQUEST  ") == RequestFormCommand()


def test_several_vms_are_separated_by_commas_and_named_once_regardless_of_case() -> None:
    command = parse_command("request vm-a,VM-B,vm-A 22,3389 2h from 203.0.113.7")
    assert isinstance(command, RequestCommand)
    assert command.vms == ("vm-a", "VM-B")
    assert command.ports == (22, 3389)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("request vm-a,,vm-b 22 1h", "has an empty VM name"),
        ("request vm-a, 22 1h", "has an empty VM name"),
        ("request a,b,c,d,e,f 22 1h", "at most 5 VMs"),
        ("source set", "`source` takes nothing"),
        ("source forget", "`source` takes nothing"),
    ],
)
def test_malformed_vm_lists_and_source_commands_say_what_is_allowed(
    text: str, expected: str
) -> None:
    with pytest.raises(CommandError, match=expected):
        parse_command(text)


def test_source_commands_show_set_and_clear() -> None:
    assert parse_command("source") == SourceCommand("show")
    assert parse_command("source set 203.0.113.7") == SourceCommand("set", "203.0.113.7")
    assert parse_command("source CLEAR") == SourceCommand("clear")


# -- VM names -----------------------------------------------------------------------------


def test_vm_names_are_matched_without_case_and_as_resource_ids() -> None:
    policies = parse_policies(POLICIES)
    for typed in ("VM-WEB01", SUBSCRIPTION_VM, SUBSCRIPTION_VM.upper() + "/"):
        checked = check_request(policies, typed, [22], timedelta(hours=1), "203.0.113.7")
        assert checked.vm_name == "vm-web01"


@pytest.mark.parametrize(
    ("typed", "suggestion"),
    [
        ("vm-web1", "vm-web01"),
        ("VM-DB1", "vm-db01"),
        ("vm-wbe01", "vm-web01"),
        (SUBSCRIPTION_VM.replace("vm-web01", "vm-web0l"), "vm-web01"),
        ("database", None),
    ],
)
def test_near_misses_among_policy_vms_get_a_suggestion(typed: str, suggestion: str | None) -> None:
    policies = parse_policies(POLICIES)
    with pytest.raises(UnknownVm) as caught:
        check_request(policies, typed, [22], timedelta(hours=1), "203.0.113.7")
    assert caught.value.suggestion == suggestion
    if suggestion:
        assert f"did you mean `{suggestion}`?" in caught.value.message
    else:
        assert "did you mean" not in caught.value.message


def test_closest_vm_name_keeps_the_policy_spelling() -> None:
    assert closest_vm_name("VM-APP1", ["vm-App01", "vm-web01"]) == "vm-App01"


# -- several VMs in the engine --------------------------------------------------------------


def test_a_request_for_several_vms_records_one_linked_request_per_vm(
    engine: Engine, store: Store
) -> None:
    requests = engine.submit_group(
        "T1", "U0REQ12345", ["VM-WEB01", "vm-db01"], [22], timedelta(hours=1), "203.0.113.7"
    )

    assert [r.vm_name for r in requests] == ["vm-web01", "vm-db01"]
    assert requests[0].group_id and requests[0].group_id == requests[1].group_id
    assert {r.status for r in all_requests(store)} == {"pending"}
    events = [e for e in store.audit_events() if e.action == "requested"]
    assert [e.detail["group"] for e in events] == [requests[0].group_id] * 2
    assert len(store.pending_notifications()) == 2


def test_one_refused_vm_refuses_the_whole_request_and_says_what_was_wrong_per_vm(
    engine: Engine, store: Store
) -> None:
    with pytest.raises(RequestRejected) as caught:
        engine.submit_group(
            "T1",
            "U0REQ12345",
            ["vm-web01", "vm-db1", "vm-app01"],
            [22],
            timedelta(hours=1),
            "203.0.113.7",
        )

    message = caught.value.message
    assert message.startswith("nothing was requested: ")
    assert "vm-db1: no JIT policy covers a VM named `vm-db1`; did you mean `vm-db01`?" in message
    assert "vm-app01: port 22 is not in the policy for vm-app01" in message
    assert "vm-web01:" not in message
    assert all_requests(store) == []


def test_the_same_vm_twice_under_two_spellings_is_refused(engine: Engine, store: Store) -> None:
    with pytest.raises(RequestRejected, match="the same VM is named twice"):
        engine.submit_group(
            "T1",
            "U0REQ12345",
            ["vm-web01", SUBSCRIPTION_VM],
            [22],
            timedelta(hours=1),
            "203.0.113.7",
        )
    assert all_requests(store) == []


def test_the_pending_limit_counts_every_vm_of_a_group(engine: Engine, store: Store) -> None:
    engine.max_pending_per_requester = 2
    engine.submit("T1", "U0REQ12345", "vm-web01", [22], timedelta(hours=1), "203.0.113.7")
    with pytest.raises(RequestRejected, match="already have 1 requests waiting"):
        engine.submit_group(
            "T1", "U0REQ12345", ["vm-web01", "vm-db01"], [22], timedelta(hours=1), "203.0.113.7"
        )
    assert len(all_requests(store)) == 1


def test_a_single_vm_request_keeps_its_own_error_and_has_no_group(
    engine: Engine, store: Store
) -> None:
    with pytest.raises(UnknownVm):
        engine.submit_group(
            "T1", "U0REQ12345", ["vm-nope"], [22], timedelta(hours=1), "203.0.113.7"
        )
    [request] = engine.submit_group(
        "T1", "U0REQ12345", ["vm-web01"], [22], timedelta(hours=1), "203.0.113.7"
    )
    assert request.group_id is None


# -- one-time links -------------------------------------------------------------------------


def test_a_link_is_stored_hashed_and_works_exactly_once(store: Store) -> None:
    clock = ManualClock()
    links = SourceLinks(store, timedelta(minutes=5), clock)
    token = links.create("U0REQ12345", "T1", {"vms": ["vm-web01"]})

    with store.session() as session:
        [row] = session.exec(select(SourceLink)).all()
    assert row.token_hash == hash_token(token) and token not in json.dumps(
        row.model_dump(mode="json")
    )
    assert links.peek(token) is not None
    assert links.peek(token) is not None  # looking uses nothing up

    used = links.redeem(token)
    assert used is not None and used.slack_user_id == "U0REQ12345"
    assert used.draft == {"vms": ["vm-web01"]}
    assert links.redeem(token) is None
    assert links.peek(token) is None


def test_an_expired_link_is_refused_and_stays_unused(store: Store) -> None:
    clock = ManualClock()
    links = SourceLinks(store, timedelta(minutes=5), clock)
    token = links.create("U0REQ12345", "T1", {})

    clock.now += timedelta(minutes=5)

    assert links.peek(token) is None
    assert links.redeem(token) is None
    with store.session() as session:
        assert session.exec(select(SourceLink)).one().used_at is None


def test_links_expired_for_a_day_are_forgotten_when_a_new_one_is_made(store: Store) -> None:
    clock = ManualClock()
    links = SourceLinks(store, timedelta(minutes=5), clock)
    links.create("U0REQ12345", "T1", {})
    clock.now += timedelta(days=1, minutes=4)
    links.create("U0REQ12345", "T1", {})
    with store.session() as session:
        assert len(session.exec(select(SourceLink)).all()) == 2

    clock.now += timedelta(minutes=2)
    fresh = links.create("U0REQ12345", "T1", {})

    with store.session() as session:
        assert len(session.exec(select(SourceLink)).all()) == 2
    assert links.peek(fresh) is not None


@pytest.mark.parametrize("token", ["", "short", "x" * 43, "../../etc/passwd" + "a" * 27])
def test_unknown_or_malformed_tokens_find_no_link(store: Store, token: str) -> None:
    links = SourceLinks(store, timedelta(minutes=5))
    links.create("U0REQ12345", "T1", {})
    assert links.peek(token) is None
    assert links.redeem(token) is None


# -- the browser's address ----------------------------------------------------------------


def environ(remote: str, forwarded: str | None = None) -> dict[str, Any]:
    env: dict[str, Any] = {"REMOTE_ADDR": remote}
    if forwarded is not None:
        env["HTTP_X_FORWARDED_FOR"] = forwarded
    return env


def test_forwarded_for_is_ignored_unless_the_connection_comes_from_a_trusted_proxy() -> None:
    trusted = parse_proxies(["10.0.0.0/24"])
    assert client_address(environ("198.51.100.7", "203.0.113.9"), trusted) == "198.51.100.7"
    assert client_address(environ("198.51.100.7", "203.0.113.9"), []) == "198.51.100.7"


def test_the_right_most_address_that_is_not_a_trusted_proxy_is_the_browser() -> None:
    trusted = parse_proxies(["10.0.0.0/24", "192.168.5.5"])
    forged_then_real = "1.2.3.4, 203.0.113.9, 192.168.5.5"
    assert client_address(environ("10.0.0.2", forged_then_real), trusted) == "203.0.113.9"
    assert client_address(environ("10.0.0.2", "203.0.113.9"), trusted) == "203.0.113.9"


def test_a_trusted_proxy_without_forwarded_for_or_with_garbage_is_handled() -> None:
    trusted = parse_proxies(["10.0.0.0/24"])
    assert client_address(environ("10.0.0.2"), trusted) == "10.0.0.2"
    assert client_address(environ("10.0.0.2", "203.0.113.9, not-an-ip"), trusted) is None
    assert client_address(environ("not-an-ip"), trusted) is None


def test_ipv4_mapped_ipv6_addresses_are_read_as_ipv4() -> None:
    assert client_address(environ("::ffff:203.0.113.9"), []) == "203.0.113.9"


# -- flags for approvers --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "kinds"),
    [
        ("10.1.2.3/32", ["private"]),
        ("192.168.0.0/24", ["private"]),
        ("fd00::1/128", ["private"]),
        ("100.64.1.2/32", ["cgnat"]),
        ("198.51.100.7/32", ["cloud"]),
        ("198.51.100.200/32", ["cloud"]),
        ("192.0.2.1/32", ["cloud"]),
        ("2001:db8:c::5/128", ["cloud"]),
        ("203.0.113.7/32", []),
    ],
)
def test_sources_are_flagged_as_private_shared_or_cloud(prefix: str, kinds: list[str]) -> None:
    ranges = load_cloud_ranges(sorted(SEEDS.glob("cloud-ranges-*.sample.json")))
    flags = SourceFlagger(ranges).flags(prefix)
    assert [f.kind for f in flags] == kinds


def test_cloud_flags_name_the_provider_and_range_of_each_published_format() -> None:
    flagger = SourceFlagger(load_cloud_ranges(sorted(SEEDS.glob("cloud-ranges-*.sample.json"))))
    assert "Azure AzureCloud.sample" in flagger.flags("198.51.100.7/32")[0].detail
    assert "AWS EC2 sample-1" in flagger.flags("2001:db8:b::1/128")[0].detail
    assert "Google Cloud sample-region1" in flagger.flags("192.0.2.1/32")[0].detail


def test_a_file_in_no_known_format_is_refused_with_its_name(tmp_path: Path) -> None:
    path = tmp_path / "ranges.json"
    path.write_text('{"something": []}', encoding="utf-8")
    with pytest.raises(CloudRangesError, match=str(path)):
        load_cloud_ranges([path])
    with pytest.raises(ValueError):
        parse_cloud_ranges({"values": [{"name": "x", "properties": {"addressPrefixes": ["x"]}}]})


def test_the_approval_message_shows_the_flags_escaped() -> None:
    request = AccessRequest(id=7, source_prefix="100.64.1.2/32")
    flags = SourceFlagger().flags("100.64.1.2/32")
    block = messages.source_flags_block(request, flags)
    Block.parse(block).validate_json()
    assert "`100.64.1.2/32` is a shared carrier-grade NAT address" in json.dumps(block)


# -- the form -------------------------------------------------------------------------------


def form_values(
    vms: list[str], ports: list[str], duration: str, source: str = "", reason: str = ""
) -> dict[str, Any]:
    def selected(values: list[str]) -> dict[str, Any]:
        return {
            "type": "multi_static_select",
            "selected_options": [
                {"text": {"type": "plain_text", "text": v}, "value": v} for v in values
            ],
        }

    def text(value: str) -> dict[str, Any]:
        return {"type": "plain_text_input", "value": value or None}

    return {
        "state": {
            "values": {
                messages.FORM_VMS_BLOCK: {messages.FORM_VMS_INPUT: selected(vms)},
                messages.FORM_PORTS_BLOCK: {messages.FORM_PORTS_INPUT: selected(ports)},
                messages.FORM_DURATION_BLOCK: {messages.FORM_DURATION_INPUT: text(duration)},
                messages.FORM_SOURCE_BLOCK: {messages.FORM_SOURCE_INPUT: text(source)},
                messages.FORM_REASON_BLOCK: {messages.FORM_REASON_INPUT: text(reason)},
            }
        }
    }


def desk(engine: Engine) -> RequestDesk:
    return RequestDesk(engine, None, None, None, None, None)  # type: ignore[arg-type]


def test_the_form_is_valid_block_kit_with_the_saved_source_prefilled() -> None:
    view = messages.request_form_view(["vm-db01", "vm-web01"], [(22, "Tcp")], "203.0.113.7/32")
    assert View(**view).to_dict() == view
    View(**view).validate_json()
    [source] = [b for b in view["blocks"] if b.get("block_id") == messages.FORM_SOURCE_BLOCK]
    assert source["element"]["initial_value"] == "203.0.113.7/32"
    for other in (messages.request_form_loading_view(), messages.request_form_message_view("x")):
        View(**other).validate_json()
    _text, blocks = messages.my_ip_offer(["vm-web01"], "https://jit.example.com/my-ip/t", 5)
    for block in blocks:
        Block.parse(block).validate_json()


def test_a_form_with_more_vms_than_slack_lists_says_so() -> None:
    vms = [f"vm-{n:03}" for n in range(130)]
    view = messages.request_form_view(vms, [(22, "Tcp")], None)
    View(**view).validate_json()
    [vm_block] = [b for b in view["blocks"] if b.get("block_id") == messages.FORM_VMS_BLOCK]
    assert len(vm_block["element"]["options"]) == messages.MAX_FORM_OPTIONS
    assert "You may request 130 VMs; the list shows the first 100" in json.dumps(view)


def test_a_valid_form_gives_a_draft(engine: Engine) -> None:
    draft, errors = desk(engine).read_form(
        form_values(["vm-web01", "vm-db01"], ["22"], "90m", "203.0.113.7", "deploy")
    )
    assert errors == {}
    assert draft == Draft(
        ("vm-web01", "vm-db01"), (22,), timedelta(minutes=90), "203.0.113.7", "deploy"
    )


def test_form_errors_are_put_on_the_block_they_belong_to(engine: Engine) -> None:
    _draft, errors = desk(engine).read_form(
        form_values(["vm-web01", "vm-app01"], ["22"], "2h", "0.0.0.0/0")
    )
    assert set(errors) == {messages.FORM_PORTS_BLOCK, messages.FORM_SOURCE_BLOCK}
    assert errors[messages.FORM_PORTS_BLOCK].startswith("vm-app01: port 22 is not in the policy")
    assert "vm-web01: `0.0.0.0/0` is not an allowed source" in errors[messages.FORM_SOURCE_BLOCK]

    _draft, errors = desk(engine).read_form(form_values([], ["x"], "forever"))
    assert set(errors) == {
        messages.FORM_VMS_BLOCK,
        messages.FORM_PORTS_BLOCK,
        messages.FORM_DURATION_BLOCK,
    }

    _draft, errors = desk(engine).read_form(form_values(["vm-web01"], ["3389"], "2h"))
    assert errors == {
        messages.FORM_DURATION_BLOCK: "a duration of 2h is outside the policy; allowed: 1s to 1h"
    }


def test_a_private_saved_source_is_refused_by_a_policy_that_forbids_it(engine: Engine) -> None:
    draft = Draft(("vm-app01",), (443,), timedelta(hours=1), "10.1.2.3", "")
    [problem] = desk(engine).problems(draft)
    assert problem.block == messages.FORM_SOURCE_BLOCK
    assert "does not allow private or shared (CGNAT) addresses" in problem.text


def test_saving_a_source_validates_it_and_is_audited(engine: Engine, store: Store) -> None:
    requests = desk(engine)
    assert "not an allowed source" in requests.source_command(
        SourceCommand("set", "0.0.0.0/0"), "U0REQ12345"
    )
    assert requests.saved_source("U0REQ12345") is None

    assert "Saved `203.0.113.0/28`" in requests.source_command(
        SourceCommand("set", "203.0.113.0/28"), "U0REQ12345"
    )
    requests.source_command(SourceCommand("set", "203.0.113.9"), "U0REQ12345")
    assert requests.saved_source("U0REQ12345") == "203.0.113.9/32"
    assert "`203.0.113.9/32`" in requests.source_command(SourceCommand("show"), "U0REQ12345")

    assert "forgotten" in requests.source_command(SourceCommand("clear"), "U0REQ12345")
    assert requests.saved_source("U0REQ12345") is None
    assert "nothing changed" in requests.source_command(SourceCommand("clear"), "U0REQ12345")
    with store.session() as session:
        actions = [e.action for e in session.exec(select(AuditEvent)).all()]
    assert actions == ["source_saved", "source_saved", "source_cleared"]


def test_jitbot_send_prints_the_address_of_a_link_button() -> None:
    text, blocks = messages.my_ip_offer(["vm-web01"], "http://127.0.0.1:3000/my-ip/t", 5)
    shown = _with_links({"text": text, "blocks": blocks})
    assert shown.splitlines() == [text, "[Use my current IP] http://127.0.0.1:3000/my-ip/t"]


# -- the link pages ---------------------------------------------------------------------------


def call_page(pages: SourceLinkPages, method: str, path: str, remote: str = "198.51.100.7"):
    seen: list[str] = []
    body = pages(
        {"REQUEST_METHOD": method, "PATH_INFO": path, "REMOTE_ADDR": remote},
        lambda status, headers: seen.append(status),
    )
    return seen[0], b"".join(body).decode()


def test_link_pages_refuse_other_methods_and_unknown_addresses_without_using_the_link(
    store: Store,
) -> None:
    links = SourceLinks(store, timedelta(minutes=5))
    token = links.create("U0REQ12345", "T1", {})
    completed: list[str] = []

    def complete(link: SourceLink, address: str) -> LinkOutcome:
        completed.append(address)
        return LinkOutcome(True, "sent <b>")

    pages = SourceLinkPages(links, [], lambda link: "Request <x>", complete)

    assert call_page(pages, "PUT", "/my-ip/" + token)[0].startswith("405")
    assert call_page(pages, "POST", "/my-ip/" + token, remote="")[0].startswith("400")
    status, page = call_page(pages, "GET", "/my-ip/" + token)
    assert status.startswith("200") and "Request &lt;x&gt;" in page and completed == []

    status, page = call_page(pages, "POST", "/my-ip/" + token)
    assert status.startswith("200") and "sent &lt;b&gt;" in page
    assert completed == ["198.51.100.7"]
    assert call_page(pages, "POST", "/my-ip/" + token)[0].startswith("404")
    assert completed == ["198.51.100.7"]


def test_cloud_range_files_that_do_not_exist_are_named_by_the_settings_check(
    tmp_path: Path,
) -> None:
    from pydantic import ValidationError

    from bot.settings import Settings, problems

    sample = SEEDS / "cloud-ranges-aws.sample.json"
    base = {
        "slack_signing_secret": "s",
        "slack_bot_token": "xoxb-1",
        "azure_subscription_id": "00000000-0000-0000-0000-000000000000",
    }
    assert Settings(**base, cloud_ranges=f"{sample}, ").cloud_ranges  # type: ignore[arg-type]
    with pytest.raises(ValidationError) as caught:
        Settings(**base, cloud_ranges=f"{sample},{tmp_path / 'nope.json'}")  # type: ignore[arg-type]
    [line] = problems(caught.value)
    assert line.startswith("JITBOT_CLOUD_RANGES: no such file: ") and "nope.json" in line
