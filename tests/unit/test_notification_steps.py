"""A notification that sends several messages and is delivered again after failing
part-way sends each message once."""

from __future__ import annotations

from datetime import timedelta

import pytest

from jitcore.db import Store, create_schema, make_engine
from jitcore.engine import Engine, PolicySet
from jitcore.model import AccessRequest
from jitcore.notify import send_once
from jitcore.policy import parse_policies
from tests.fakes import FakeCloud, RecordingNotifier

POLICY = {
    "name": "web-admin",
    "vms": ["vm-web01"],
    "ports": [{"port": 22, "max_duration": "3h"}],
    "approvers": ["U0APPROVR1"],
    "approval_channel": "C0OPS12345",
}


class ThreadFailsOnce(RecordingNotifier):
    """Tells the requester of a denial by DM, then posts in the approval thread; the
    first thread post fails, as if the process had died between the two."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[str] = []
        self.thread_failures = 1

    def request_denied(self, request: AccessRequest) -> None:
        send_once("dm", lambda: self.sent.append("dm"))
        send_once("thread", self._thread)

    def _thread(self) -> None:
        if self.thread_failures:
            self.thread_failures -= 1
            raise ConnectionError("the process went away here")
        self.sent.append("thread")


@pytest.fixture
def engine(database_url: str):
    store = Store(make_engine(database_url))
    create_schema(store.engine)
    policies = parse_policies({"policies": [POLICY]})
    notifier = ThreadFailsOnce()
    yield Engine(store, PolicySet(policies, {"web-admin": 1}), FakeCloud(), notifier)
    store.engine.dispose()


def test_a_redelivered_notification_skips_the_messages_it_already_sent(engine: Engine) -> None:
    request = engine.submit(
        "T0001ABCD", "U0REQ12345", "vm-web01", [22], timedelta(hours=1), "203.0.113.7"
    )
    engine.deliver(request.id)

    engine.deny(request.id, "U0APPROVR1")  # delivers: the DM goes, the thread post fails
    [denied] = [n for n in engine.store.notifications(request.id) if n.event == "request_denied"]
    assert denied.sent_at is None and denied.steps_done == ["dm#1"]

    engine.deliver(request.id)  # the retry

    notifier = engine.notifier
    assert isinstance(notifier, ThreadFailsOnce)
    assert notifier.sent == ["dm", "thread"]
    [denied] = [n for n in engine.store.notifications(request.id) if n.event == "request_denied"]
    assert denied.sent_at is not None and denied.steps_done == ["dm#1", "thread#1"]


def test_outside_a_delivery_send_once_simply_sends() -> None:
    sent: list[str] = []
    send_once("dm", lambda: sent.append("dm"))
    send_once("dm", lambda: sent.append("dm"))
    assert sent == ["dm", "dm"]
