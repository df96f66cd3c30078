"""The contract between the server and a resource-provider module.

A provider module (``network.py``, ``compute.py``, ...) exposes one :class:`Provider`: its
namespace, its routes, and a seed loader. A :class:`Route` is an ARM path template such as
``/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/
Microsoft.Network/networkSecurityGroups/{networkSecurityGroupName}`` with the api-versions it
accepts and a handler. Handlers take a :class:`Request`, return a :class:`Response`, and raise
:class:`~sandbox.arm.errors.ArmError` for any failure. They run under the store lock.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from sandbox.arm.errors import ArmError, invalid_request_format
from sandbox.arm.faults import Fault
from sandbox.arm.lro import Operations
from sandbox.arm.state import ResourceGroup, Store


@dataclass
class Response:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Request:
    """One ARM call, as a handler sees it."""

    method: str
    path: str
    params: dict[str, str]
    query: dict[str, str]
    headers: Mapping[str, str]
    raw_body: bytes
    api_version: str
    namespace: str
    base_url: str
    store: Store
    operations: Operations
    take_operation_fault: Callable[[], Fault | None]
    client_address: str | None = None
    """The address of the HTTP client (Defender opens JIT ports for it by default)."""

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def json_body(self) -> dict[str, Any]:
        """The body as a JSON object, else 400 InvalidRequestFormat."""
        try:
            body = json.loads(self.raw_body or b"null")
        except (ValueError, UnicodeDecodeError) as exc:
            raise invalid_request_format() from exc
        if not isinstance(body, dict):
            raise invalid_request_format()
        return body

    @property
    def group(self) -> ResourceGroup:
        """The resource group of the path (the server checked that it exists)."""
        found = self.store.group(self.params["resourceGroupName"])
        assert found is not None
        return found

    def ensure_idle(self, resource_id: str) -> None:
        self.operations.ensure_idle(resource_id)

    def begin_operation(
        self,
        resource_id: str,
        location: str,
        on_success: Callable[[], None],
        on_failure: Callable[[], None],
        *,
        location_header: bool = False,
    ) -> dict[str, str]:
        """Start a long-running operation; returns the headers the initial response carries."""
        fault = self.take_operation_fault()
        operation = self.operations.begin(
            base_url=self.base_url,
            namespace=self.namespace,
            location=location,
            api_version=self.api_version,
            resource_id=resource_id,
            on_success=on_success,
            on_failure=on_failure,
            delay=(fault.delay_seconds or 0.0) if fault else 0.0,
            failure=fault.failure() if fault else None,
        )
        headers = {
            "Azure-AsyncOperation": operation.status_url,
            "Retry-After": str(self.operations.retry_after_for(operation)),
        }
        if location_header:
            headers["Location"] = operation.result_url
        return headers


Handler = Callable[[Request], Response]


@dataclass(frozen=True)
class Route:
    """An ARM path template, the HTTP method, accepted api-versions and the handler."""

    method: str
    template: str
    handler: Handler
    api_versions: tuple[str, ...]
    resource_type: str

    @property
    def segments(self) -> list[str]:
        return self.template.strip("/").split("/")

    def match(self, segments: Sequence[str]) -> dict[str, str] | None:
        """Path parameters when ``segments`` fit the template (literals case-insensitive)."""
        template = self.segments
        if len(template) != len(segments):
            return None
        params: dict[str, str] = {}
        for pattern, value in zip(template, segments, strict=True):
            if pattern.startswith("{") and pattern.endswith("}"):
                if not value:
                    return None
                params[pattern[1:-1]] = value
            elif pattern.lower() != value.lower():
                return None
        return params


SeedLoader = Callable[[Store, ResourceGroup, Mapping[str, Any]], None]
RootSeedLoader = Callable[[Store, Mapping[str, Any]], None]
Ticker = Callable[[Store, float], None]


@dataclass(frozen=True)
class Provider:
    """A resource provider: namespace, routes, seed loaders, and whether it runs LROs.

    ``load_seed`` is called once per resource group of the seed, in provider order, with the
    group's seed object; it reads the keys it owns and ignores the others.
    ``load_root_seed`` is called once with the whole seed, after every resource group is
    loaded, for what lives above resource groups (role assignments, the directory).
    ``tick(store, now)`` (Unix seconds) makes the changes a provider does on its own as time
    passes (Defender opening and closing JIT ports); the server calls it under the store lock
    before every request, before every read of its state, and from its clock thread.
    """

    namespace: str
    routes: tuple[Route, ...]
    load_seed: SeedLoader | None = None
    api_versions: tuple[str, ...] = ()
    uses_operations: bool = False
    load_root_seed: RootSeedLoader | None = None
    tick: Ticker | None = None


def split_path(path: str) -> list[str]:
    return [unquote(segment) for segment in path.strip("/").split("/")]


def check_preconditions(request: Request, current_etag: str | None, resource_id: str) -> None:
    """412 PreconditionFailed when If-Match / If-None-Match do not hold for ``current_etag``."""
    if_match = (request.header("If-Match") or "").strip()
    if if_match and (current_etag is None or if_match not in ("*", current_etag)):
        shown = current_etag or "none (the resource does not exist)"
        raise _precondition_failed("If-Match", if_match, shown, resource_id)
    if_none_match = (request.header("If-None-Match") or "").strip()
    if if_none_match == "*" and current_etag is not None:
        raise _precondition_failed("If-None-Match", if_none_match, current_etag, resource_id)


def _precondition_failed(header: str, value: str, current: str, resource_id: str) -> ArmError:
    message = (
        f"Precondition failed for resource {resource_id}: {header} is {value} and the current "
        f"ETag is {current}."
    )
    return ArmError(412, "PreconditionFailed", message)
