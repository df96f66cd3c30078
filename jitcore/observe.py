"""A hook through which jitcore reports what it does, for metrics kept outside it.

jitcore never imports the bot, so it cannot count into the bot's Prometheus registry
itself. Instead the engine and the NSG gateway call an :class:`Observer`; by default
:data:`NULL_OBSERVER`, which does nothing. The bot sets its own (``bot.metrics``) on each
instance it builds, so several bots in one process keep separate counts.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Concatenate, ParamSpec, Protocol, TypeVar

from jitcore.errors import RequestRejected

if TYPE_CHECKING:
    from jitcore.model import AccessRequest

P = ParamSpec("P")
T = TypeVar("T")


class Observer(Protocol):
    def request_event(self, event: str, request: AccessRequest | None) -> None:
        """A request reached a lifecycle point: ``submitted``, ``rejected`` (with no
        request, as none was recorded), ``approved``, ``denied``, ``opened``, ``failed``,
        ``closed``, ``revoked`` or ``expired``."""

    def arm_response(self, method: str, status: int) -> None:
        """Azure Resource Manager answered one HTTP call (every attempt and poll)."""

    def arm_retry(self, status: int | None, code: str | None) -> None:
        """jitbot retries an ARM operation that Azure said was temporary."""


class NullObserver:
    def request_event(self, event: str, request: AccessRequest | None) -> None:
        return None

    def arm_response(self, method: str, status: int) -> None:
        return None

    def arm_retry(self, status: int | None, code: str | None) -> None:
        return None


NULL_OBSERVER: Observer = NullObserver()


class _Observed(Protocol):
    observer: Observer


Subject = TypeVar("Subject", bound=_Observed)


def counts_rejections(
    method: Callable[Concatenate[Subject, P], T],
) -> Callable[Concatenate[Subject, P], T]:
    """Report ``rejected`` when ``method`` raises RequestRejected, then let it propagate.

    A decorator rather than a call in the method, because a rejected request is never
    recorded: the only sign of it is the exception.
    """

    @functools.wraps(method)
    def wrapper(self: Subject, *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return method(self, *args, **kwargs)
        except RequestRejected:
            self.observer.request_event("rejected", None)
            raise

    return wrapper
