"""Retrying what Azure says is temporary.

azure-core's RetryPolicy already retries 429 and 5xx answers to plain requests. What it
does not retry is 409 ``AnotherOperationInProgress`` (another write to the same resource
is still running) and a failure reported while polling a long-running operation; those
are retried here, with capped exponential backoff that honours ``Retry-After``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from azure.core.exceptions import HttpResponseError

from jitcore.azure.clients import cloud_error
from jitcore.errors import CloudError
from jitcore.observe import NULL_OBSERVER, Observer

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRYABLE_CODES = frozenset({"AnotherOperationInProgress", "RetryableError", "Conflict"})
RETRYABLE_STATUS = frozenset({409, 429, 500, 502, 503, 504})
MAX_DELAY = 10.0


@dataclass
class Retrier:
    attempts: int = 8
    backoff: float = 0.5
    sleep: Callable[[float], None] = time.sleep
    observer: Observer = field(default=NULL_OBSERVER)

    def run(self, call: Callable[[], T], doing: str) -> T:
        """Run ``call``; raise CloudError (with Azure's code) once it is not worth retrying."""
        for attempt in range(1, self.attempts + 1):
            try:
                return call()
            except HttpResponseError as exc:
                code = getattr(getattr(exc, "error", None), "code", None)
                if not _retryable(exc.status_code, code) or attempt == self.attempts:
                    raise cloud_error(exc, doing) from exc
                delay = retry_after(exc) or min(self.backoff * 2 ** (attempt - 1), MAX_DELAY)
                log.warning(
                    "Azure answered %s %s while trying to %s; retry %d in %.1fs",
                    exc.status_code,
                    code,
                    doing,
                    attempt,
                    delay,
                )
                self.observer.arm_retry(exc.status_code, code)
                self.sleep(delay)
        raise CloudError(f"gave up trying to {doing}")  # pragma: no cover


def _retryable(status: int | None, code: str | None) -> bool:
    if status == 409:
        return code in RETRYABLE_CODES
    return code in RETRYABLE_CODES or status in RETRYABLE_STATUS


def retry_after(exc: HttpResponseError) -> float | None:
    """Seconds from the answer's ``Retry-After`` header, when it has a usable one."""
    response = getattr(exc, "response", None)
    if response is None:
        return None
    value = response.headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
