"""The errors jitcore raises.

Every error carries the value it is about and a message that a chat user can act on:
what was wrong and what is allowed. The bot shows ``str(error)`` to the user as it is,
after escaping, so messages never contain secrets or stack traces.

    JitError
    ├── RequestRejected        the request breaks the policy or is malformed
    │   ├── InvalidSource
    │   ├── UnknownVm
    │   ├── PortNotAllowed
    │   └── DurationOutOfBounds
    ├── NotAuthorized          who asked may not do this
    ├── StateConflict          the request is no longer in a state that allows this
    ├── PlacementError         no place for a rule in an NSG (full, no free priority)
    └── CloudError             Azure refused or failed; carries Azure's code and message
"""

from __future__ import annotations


class JitError(Exception):
    """Root of every error jitcore raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RequestRejected(JitError):
    """The request itself is wrong; nothing was changed."""


class InvalidSource(RequestRejected):
    def __init__(self, value: str, reason: str) -> None:
        super().__init__(f"`{value}` is not an allowed source: {reason}")
        self.value = value


class UnknownVm(RequestRejected):
    def __init__(self, name: str, known: list[str], suggestion: str | None = None) -> None:
        allowed = ", ".join(sorted(known)) if known else "none"
        hint = f"did you mean `{suggestion}`? " if suggestion else ""
        super().__init__(
            f"no JIT policy covers a VM named `{name}`; {hint}VMs you can request: {allowed}"
        )
        self.name = name
        self.suggestion = suggestion


class PortNotAllowed(RequestRejected):
    def __init__(self, port: int, vm: str, allowed: list[int]) -> None:
        ports = ", ".join(str(p) for p in sorted(allowed))
        super().__init__(f"port {port} is not in the policy for {vm}; allowed: {ports}")
        self.port = port


class DurationOutOfBounds(RequestRejected):
    def __init__(self, requested: str, minimum: str, maximum: str) -> None:
        super().__init__(
            f"a duration of {requested} is outside the policy; allowed: {minimum} to {maximum}"
        )
        self.requested = requested


class NotAuthorized(JitError):
    """The actor may not do this (not an approver, the requester approving themself...)."""


class StateConflict(JitError):
    """The request moved on before this action could apply (double click, late click)."""

    def __init__(self, message: str, current_status: str, decided_by: str | None = None) -> None:
        super().__init__(message)
        self.current_status = current_status
        self.decided_by = decided_by


class PlacementError(JitError):
    """The planner found no valid place for a rule."""


class CloudError(JitError):
    """Azure refused or failed an operation; ``code`` is Azure's error code."""

    def __init__(self, message: str, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
