"""Injected faults, the write-throttling bucket and the log of calls seen.

A fault matches ARM calls by method and a substring of the path (both optional, both
case-insensitive) and is used up after ``times`` matches (no ``times``: until cleared).
Two kinds:

- an error fault (``status``, optional ``code``, ``message``, ``retry_after``) answers the
  matching call at once with that ARM error;
- an operation fault (``fail_on_poll`` and/or ``delay_seconds``) lets the matching write start
  normally and changes its long-running operation: it later reports ``Failed``, or stays
  ``InProgress`` for at least ``delay_seconds``;
- a timing fault holds the matching call: ``stall_seconds`` before it is handled (the
  change is not made yet), ``reply_delay_seconds`` after it was handled and before the
  answer is sent (the change is made, the caller does not know yet). Crash tests kill the
  client inside these windows.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from sandbox.arm.errors import ArmError

DEFAULT_CODES = {
    400: "BadRequest",
    401: "AuthenticationFailed",
    403: "AuthorizationFailed",
    404: "NotFound",
    409: "Conflict",
    412: "PreconditionFailed",
    429: "TooManyRequests",
    500: "InternalServerError",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "GatewayTimeout",
}

FAULT_FIELDS = {
    "method",
    "path_contains",
    "status",
    "code",
    "message",
    "retry_after",
    "times",
    "fail_on_poll",
    "delay_seconds",
    "stall_seconds",
    "reply_delay_seconds",
}


@dataclass
class Fault:
    id: int
    method: str | None = None
    path_contains: str | None = None
    status: int | None = None
    code: str | None = None
    message: str | None = None
    retry_after: float | None = None
    times: int | None = None
    fail_on_poll: bool = False
    delay_seconds: float | None = None
    stall_seconds: float | None = None
    reply_delay_seconds: float | None = None
    hits: int = 0

    @property
    def is_error(self) -> bool:
        return self.status is not None

    @property
    def is_timing(self) -> bool:
        return not self.is_error and (
            self.stall_seconds is not None or self.reply_delay_seconds is not None
        )

    @property
    def kind(self) -> str:
        return "error" if self.is_error else "timing" if self.is_timing else "operation"

    def matches(self, method: str, path: str) -> bool:
        if self.method and self.method.upper() != method.upper():
            return False
        return not self.path_contains or self.path_contains.lower() in path.lower()

    def used_up(self) -> bool:
        return self.times is not None and self.hits >= self.times

    def error(self) -> ArmError:
        assert self.status is not None
        code = self.code or DEFAULT_CODES.get(self.status, "InternalServerError")
        message = self.message or f"Injected by the sandbox: {self.status} {code}."
        headers = {}
        if self.retry_after is not None:
            headers["Retry-After"] = str(math.ceil(self.retry_after))
        return ArmError(self.status, code, message, headers)

    def failure(self) -> dict[str, str] | None:
        if not self.fail_on_poll:
            return None
        return {
            "code": self.code or "InternalServerError",
            "message": self.message or "The operation failed (injected by the sandbox).",
        }


def parse_fault(spec: Mapping[str, Any], fault_id: int) -> Fault:
    """A :class:`Fault` from its JSON form; ``ValueError`` names what is wrong."""
    unknown = set(spec) - FAULT_FIELDS
    if unknown:
        raise ValueError(f"unknown fault fields {sorted(unknown)}; known: {sorted(FAULT_FIELDS)}")
    fault = Fault(id=fault_id, **_coerced(spec))
    if fault.kind == "operation" and not fault.fail_on_poll and fault.delay_seconds is None:
        raise ValueError(
            "a fault needs 'status', 'fail_on_poll', 'delay_seconds', 'stall_seconds' "
            "or 'reply_delay_seconds'"
        )
    if fault.status is not None and not 400 <= fault.status <= 599:
        raise ValueError(f"fault status must be 400-599, got {fault.status}")
    if fault.times is not None and fault.times < 1:
        raise ValueError(
            f"fault times must be at least 1 (omit it for no limit), got {fault.times}"
        )
    return fault


def _coerced(spec: Mapping[str, Any]) -> dict[str, Any]:
    """JSON values as the field types, so ``"429"`` and ``429`` mean the same."""
    converters: dict[str, Any] = {
        "status": int,
        "times": int,
        "retry_after": float,
        "delay_seconds": float,
        "stall_seconds": float,
        "reply_delay_seconds": float,
        "fail_on_poll": bool,
    }
    values = {}
    for name, value in spec.items():
        convert = converters.get(name)
        values[name] = convert(value) if convert and value is not None else value
    return values


class FaultInjector:
    """Registered faults, matched in the order they were added."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._ids = itertools.count(1)

    def add(self, spec: Mapping[str, Any]) -> Fault:
        fault = parse_fault(spec, next(self._ids))
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [asdict(fault) for fault in self._faults]

    def take_error(self, method: str, path: str) -> Fault | None:
        return self._take(method, path, "error")

    def take_operation(self, method: str, path: str) -> Fault | None:
        return self._take(method, path, "operation")

    def take_timing(self, method: str, path: str) -> Fault | None:
        return self._take(method, path, "timing")

    def _take(self, method: str, path: str, kind: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.kind == kind and fault.matches(method, path):
                    fault.hits += 1
                    if fault.used_up():
                        self._faults.remove(fault)
                    return fault
        return None


class TokenBucket:
    """ARM-style write budget per subscription: ``burst`` tokens, refilled continuously."""

    def __init__(self, burst: int, refill_per_second: float) -> None:
        self.burst = burst
        self.refill_per_second = refill_per_second
        self.enabled = True
        self._lock = threading.Lock()
        self._tokens = float(burst)
        self._updated = time.monotonic()

    def take(self) -> float:
        """Take one token: 0 when granted, else the seconds until one is available."""
        if not self.enabled:
            return 0.0
        with self._lock:
            self._refill()
            if self._tokens >= 1:
                self._tokens -= 1
                return 0.0
            if self.refill_per_second <= 0:
                return float("inf")
            return (1 - self._tokens) / self.refill_per_second

    def remaining(self) -> int:
        with self._lock:
            self._refill()
            return int(self._tokens)

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(
            self.burst, self._tokens + (now - self._updated) * self.refill_per_second
        )
        self._updated = now


class RequestLog:
    """Every ARM call answered: method, path, query, status, time (Unix seconds), body."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[dict[str, Any]] = []

    def append(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._entries.append(entry)

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(entry) for entry in self._entries]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
