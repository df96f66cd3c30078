"""Long-running operations, answered the way Microsoft.Network answers them.

A write returns at once (201/200/202) with an ``Azure-AsyncOperation`` URL. Polling that URL
answers ``{"status": "InProgress"}`` ``lro_polls`` times, then ``Succeeded`` (or ``Failed`` when a
``fail_on_poll`` fault was attached). An operation also waits for its ``delay`` (a slow-operation
fault) and ends on its own after ``timeout`` seconds without polls, so a client that stops
polling does not leave its resource locked forever.

While an operation runs it holds its resource (an NSG for any rule write): another write to the
same resource gets 409 ``AnotherOperationInProgress``, as the real service answers.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sandbox.arm.errors import ArmError
from sandbox.arm.state import id_key

logger = logging.getLogger(__name__)

IN_PROGRESS = "InProgress"
SUCCEEDED = "Succeeded"
FAILED = "Failed"

KEPT_FINISHED = 1000

DEFAULT_FAILURE = {
    "code": "InternalServerError",
    "message": "An error occurred while processing the request (injected by the sandbox).",
}


@dataclass
class Operation:
    """One asynchronous write and what to do when it ends."""

    id: str
    namespace: str
    location: str
    resource_id: str
    status_url: str
    result_url: str
    on_success: Callable[[], None]
    on_failure: Callable[[], None]
    min_polls: int
    delay: float
    timeout: float | None
    failure: dict[str, str] | None = None
    started: float = field(default_factory=time.monotonic)
    polls: int = 0
    status: str = IN_PROGRESS

    def remaining_delay(self, now: float) -> float:
        return max(0.0, self.started + self.delay - now)

    def due_on_poll(self, now: float) -> bool:
        return self.polls > self.min_polls and self.remaining_delay(now) == 0

    def timed_out(self, now: float) -> bool:
        if self.timeout is None:
            return False
        return now - self.started >= max(self.timeout, self.delay)

    def status_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"status": self.status}
        if self.status == FAILED:
            body["error"] = dict(self.failure or DEFAULT_FAILURE)
        return body


class Operations:
    """The operations of one server. Callers hold the store lock."""

    def __init__(self, lro_polls: int, retry_after: int, timeout: float | None) -> None:
        self.lro_polls = lro_polls
        self.retry_after = retry_after
        self.timeout = timeout
        self.conflicts_enabled = True
        self._operations: dict[str, Operation] = {}

    def begin(
        self,
        *,
        base_url: str,
        namespace: str,
        location: str,
        api_version: str,
        resource_id: str,
        on_success: Callable[[], None],
        on_failure: Callable[[], None],
        delay: float = 0.0,
        failure: dict[str, str] | None = None,
    ) -> Operation:
        op_id = str(uuid.uuid4())
        prefix = f"{base_url}/subscriptions/{_subscription(resource_id)}/providers/{namespace}"
        prefix += f"/locations/{location}"
        operation = Operation(
            id=op_id,
            namespace=namespace,
            location=location,
            resource_id=resource_id,
            status_url=f"{prefix}/operations/{op_id}?api-version={api_version}",
            result_url=f"{prefix}/operationResults/{op_id}?api-version={api_version}",
            on_success=on_success,
            on_failure=on_failure,
            min_polls=self.lro_polls,
            delay=delay,
            timeout=self.timeout,
            failure=failure,
        )
        self._operations[op_id] = operation
        logger.debug("operation %s started on %s", op_id, resource_id)
        return operation

    def ensure_idle(self, resource_id: str) -> None:
        """409 AnotherOperationInProgress while an operation holds ``resource_id``."""
        if not self.conflicts_enabled:
            return
        running = self.running_on(resource_id)
        if running is None:
            return
        message = (
            "Another operation on this or dependent resource is in progress. To retrieve status "
            f"of the operation use uri: {running.status_url}."
        )
        raise ArmError(409, "AnotherOperationInProgress", message)

    def running_on(self, resource_id: str) -> Operation | None:
        key = id_key(resource_id)
        for operation in self._operations.values():
            if operation.status == IN_PROGRESS and id_key(operation.resource_id) == key:
                return operation
        return None

    def poll(self, op_id: str) -> Operation | None:
        """Count one poll of ``op_id`` and end the operation when it is due."""
        operation = self._operations.get(op_id.lower())
        if operation is None:
            return None
        if operation.status == IN_PROGRESS:
            operation.polls += 1
            if operation.due_on_poll(time.monotonic()):
                self._finish(operation)
        return operation

    def retry_after_for(self, operation: Operation) -> int:
        """Seconds the client should wait: at least the remaining delay of a slow operation."""
        remaining = operation.remaining_delay(time.monotonic())
        return max(self.retry_after, math.ceil(remaining))

    def settle(self) -> None:
        """End operations nobody polled within the timeout; forget the oldest finished ones."""
        now = time.monotonic()
        for operation in list(self._operations.values()):
            if operation.status == IN_PROGRESS and operation.timed_out(now):
                logger.info("operation %s ended without polls after its timeout", operation.id)
                self._finish(operation)
        finished = [op.id for op in self._operations.values() if op.status != IN_PROGRESS]
        for op_id in finished[: max(0, len(finished) - KEPT_FINISHED)]:
            del self._operations[op_id]

    def dump(self) -> list[dict[str, Any]]:
        return [
            {"id": op.id, "resourceId": op.resource_id, "polls": op.polls, **op.status_body()}
            for op in self._operations.values()
        ]

    def _finish(self, operation: Operation) -> None:
        if operation.failure is not None:
            operation.status = FAILED
            operation.on_failure()
        else:
            operation.status = SUCCEEDED
            operation.on_success()
        logger.debug("operation %s ended: %s", operation.id, operation.status)


def _subscription(resource_id: str) -> str:
    return resource_id.split("/")[2]
