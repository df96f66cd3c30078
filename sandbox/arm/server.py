"""A local stand-in for Azure Resource Manager, served over HTTPS on 127.0.0.1.

The product's real azure-mgmt-* clients talk to it with ``base_url=arm.url`` and
``connection_verify=arm.ca_path``::

    with ArmServer(seed="sandbox/seeds/default.json") as arm:
        client = NetworkManagementClient(credential, arm.subscription_id, base_url=arm.url,
                                         connection_verify=arm.ca_path, polling_interval=0)

Every ARM call goes through the same pipeline: bearer-token check (401), api-version present
(400 MissingApiVersionParameter), route match (404/405), api-version accepted by the route,
subscription and resource group exist (404), injected error faults, the per-subscription write
budget (429), then the provider's handler under the store lock. Writes answer at once and run
as long-running operations (see :mod:`sandbox.arm.lro`); faults, throttling and the request
log are in :mod:`sandbox.arm.faults`. Test hooks live under ``/sandbox/`` without auth:
``POST|GET|DELETE /sandbox/faults``, ``GET|DELETE /sandbox/requests``, ``GET /sandbox/state``.
Microsoft Graph's directory reads are served beside ARM under ``/v1.0/``
(:mod:`sandbox.arm.directory`), with the same token and certificate.

Adding a resource provider (say ``authorization.py`` for role assignments, or ``security.py``
for Defender JIT policies):

1. Write ``sandbox/arm/<area>.py`` with handlers ``def handler(request: Request) -> Response``
   that raise :class:`~sandbox.arm.errors.ArmError` on failure, a seed loader
   ``load_seed(store, group, group_seed)`` reading its own keys of a resource group's seed, and
   ``PROVIDER = Provider(namespace=..., routes=(Route(method, template, handler, api_versions,
   resource_type), ...), load_seed=load_seed, api_versions=..., uses_operations=...)``.
   Templates are ARM paths with ``{name}`` parameters; ``{subscriptionId}`` and
   ``{resourceGroupName}`` are checked by the server before the handler runs.
2. Add its ``PROVIDER`` to :data:`PROVIDERS` below (order matters for seed loading: a provider
   may link to records of the ones before it). Records above resource groups (role
   assignments, say) come from ``load_root_seed(store, seed)``, run after every group.
3. For writes, call ``request.ensure_idle(resource_id)``,
   ``check_preconditions(request, etag, resource_id)`` and return the headers of
   ``request.begin_operation(...)``; set ``uses_operations=True`` so the server serves
   ``/subscriptions/{sub}/providers/<namespace>/locations/{location}/operations/{id}``.
4. Document its seed keys in ``sandbox/seeds/README.md`` and test it in
   ``tests/sandbox/test_arm_<area>.py`` with the real SDK client.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import re
import shutil
import socket
import ssl
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from sandbox.arm import authorization, compute, directory, firewall, network, security
from sandbox.arm.errors import (
    ArmError,
    resource_group_not_found,
    subscription_not_found,
)
from sandbox.arm.faults import FaultInjector, RequestLog, TokenBucket
from sandbox.arm.lro import IN_PROGRESS, SUCCEEDED, Operations
from sandbox.arm.provider import Provider, Request, Response, Route, split_path
from sandbox.arm.state import Store, read_seed
from sandbox.arm.tls import TlsFiles, write_certificates

logger = logging.getLogger(__name__)

PROVIDERS: tuple[Provider, ...] = (
    network.PROVIDER,
    compute.PROVIDER,
    firewall.PROVIDER,
    authorization.PROVIDER,
    security.PROVIDER,
)

WRITE_METHODS = frozenset({"PUT", "PATCH", "POST", "DELETE"})
ZERO_TENANT = "00000000-0000-0000-0000-000000000000"
_API_VERSION_RE = re.compile(r"\d{4}-\d{2}-\d{2}(-preview|-beta|-alpha|-privatepreview)?")
_CONNECTION_TIMEOUT = 60.0
_HANDSHAKE_TIMEOUT = 10.0
_CLOCK_INTERVAL = 0.05


class ArmServer:
    """The ARM stand-in: seed it, ``start()`` it, point SDK clients at :attr:`url`.

    Args:
        seed: path of a JSON seed, the seed as a dict, or ``None`` for the bundled default.
        host, port: where to listen; port 0 picks a free port.
        workdir: where the CA and server certificate go (a temporary folder when ``None``,
            removed at ``stop()``).
        token: the bearer token every ARM call must carry.
        lro_polls: how many polls of an operation answer ``InProgress`` before it ends.
        retry_after: the ``Retry-After`` seconds sent with operations and the initial response.
        lro_timeout: seconds after which an operation nobody polls ends anyway (None: never).
        concurrency_conflicts: answer 409 AnotherOperationInProgress to a write on a resource
            whose previous write is still running.
        throttling, write_burst, write_refill_per_second: the per-subscription write budget.
        providers: the resource-provider modules served (default :data:`PROVIDERS`).
        jit_apply_delay: seconds Defender takes to open the ports of an accepted JIT
            initiate (default: the seed's ``defender.applyDelaySeconds``, else 1 second).
    """

    def __init__(
        self,
        seed: str | Path | Mapping[str, Any] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        workdir: str | Path | None = None,
        token: str = "sandbox-token",
        lro_polls: int = 1,
        retry_after: int = 0,
        lro_timeout: float | None = 60.0,
        concurrency_conflicts: bool = True,
        throttling: bool = True,
        write_burst: int = 200,
        write_refill_per_second: float = 10.0,
        providers: Sequence[Provider] = PROVIDERS,
        jit_apply_delay: float | None = None,
    ) -> None:
        self._host = host
        self._port = port
        self._workdir = Path(workdir) if workdir is not None else None
        self._token = token
        self._providers = tuple(providers)
        self._store = build_store(read_seed(seed), self._providers)
        if jit_apply_delay is not None:
            security.set_apply_delay(self._store, jit_apply_delay)
        self._tickers = [p.tick for p in self._providers if p.tick is not None]
        self._clock: threading.Thread | None = None
        self._clock_stop = threading.Event()
        self._routes = self._collect_routes()
        self._operations = Operations(lro_polls, retry_after, lro_timeout)
        self._operations.conflicts_enabled = concurrency_conflicts
        self._bucket = TokenBucket(write_burst, write_refill_per_second)
        self._bucket.enabled = throttling
        self._faults = FaultInjector()
        self._stalls_seen = 0
        self._log = RequestLog()
        self._http: _HttpServer | None = None
        self._thread: threading.Thread | None = None
        self._tls: TlsFiles | None = None
        self._temporary_workdir: Path | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> ArmServer:
        """Write the certificates and serve in a background thread."""
        if self._http is not None:
            return self
        workdir = self._workdir
        if workdir is None:
            workdir = self._temporary_workdir = Path(tempfile.mkdtemp(prefix="jitbot-arm-"))
        self._tls = write_certificates(workdir, _certificate_hosts(self._host))
        self._http = _HttpServer((self._host, self._port), self, _server_context(self._tls))
        self._thread = threading.Thread(
            target=self._http.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"arm-sandbox-{self.port}",
            daemon=True,
        )
        self._thread.start()
        if self._tickers:
            self._clock_stop.clear()
            self._clock = threading.Thread(
                target=self._run_clock, name=f"arm-sandbox-clock-{self.port}", daemon=True
            )
            self._clock.start()
        logger.info("ARM stand-in listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving, close every connection, remove a temporary workdir."""
        if self._http is None:
            return
        self._clock_stop.set()
        if self._clock is not None:
            self._clock.join()
            self._clock = None
        self._http.shutdown()
        self._http.close_connections()
        self._http.server_close()
        if self._thread is not None:
            self._thread.join()
        self._http = None
        self._thread = None
        if self._temporary_workdir is not None:
            shutil.rmtree(self._temporary_workdir, ignore_errors=True)
            self._temporary_workdir = None
        logger.info("ARM stand-in stopped")

    def __enter__(self) -> ArmServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ properties

    @property
    def port(self) -> int:
        if self._http is None:
            raise RuntimeError("the ARM stand-in is not started; call start() first")
        return int(self._http.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"https://{host}:{self.port}"

    @property
    def ca_path(self) -> str:
        if self._tls is None:
            raise RuntimeError("the ARM stand-in is not started; call start() first")
        return str(self._tls.ca_path)

    @property
    def subscription_id(self) -> str:
        return self._store.subscription_id

    @property
    def tenant_id(self) -> str:
        return self._store.tenant_id

    @property
    def store(self) -> Store:
        return self._store

    @property
    def throttling(self) -> bool:
        return self._bucket.enabled

    @throttling.setter
    def throttling(self, enabled: bool) -> None:
        self._bucket.enabled = enabled

    @property
    def jit_apply_delay(self) -> float:
        """Seconds between an accepted JIT initiate and Defender's NSG change."""
        return float(security.settings(self._store)["applyDelaySeconds"])

    @jit_apply_delay.setter
    def jit_apply_delay(self, seconds: float) -> None:
        with self._store.lock:
            security.set_apply_delay(self._store, seconds)

    @property
    def concurrency_conflicts(self) -> bool:
        return self._operations.conflicts_enabled

    @concurrency_conflicts.setter
    def concurrency_conflicts(self, enabled: bool) -> None:
        self._operations.conflicts_enabled = enabled

    # ------------------------------------------------------------------ test API

    def snapshot_nsg(self, nsg_id: str) -> list[dict[str, Any]]:
        """The NSG's current ``securityRules`` as ARM JSON, sorted by name."""
        with self._store.lock:
            self._operations.settle()
            self._tick()
            nsg = self._store.get(nsg_id)
            if nsg is None or nsg["type"] != network.NSG_TYPE:
                raise LookupError(f"no network security group {nsg_id} in the sandbox")
            rules = [network.render_rule(rule) for rule in nsg["rules"].values()]
        return sorted(rules, key=lambda rule: rule["name"].lower())

    def add_fault(self, **spec: Any) -> dict[str, Any]:
        """Register a fault (fields as for ``POST /sandbox/faults``); returns it with its id."""
        fault = self._faults.add(spec)
        logger.info("fault %s added: %s", fault.id, spec)
        return next(item for item in self._faults.list() if item["id"] == fault.id)

    @property
    def stalls_seen(self) -> int:
        """How many calls a timing fault has held so far (a crash test waits for this)."""
        return self._stalls_seen

    def clear_faults(self) -> None:
        self._faults.clear()

    def faults(self) -> list[dict[str, Any]]:
        return self._faults.list()

    def requests(self) -> list[dict[str, Any]]:
        """ARM calls answered so far: method, path, query, status, time, code, body."""
        return self._log.list()

    def clear_requests(self) -> None:
        self._log.clear()

    def state(self) -> dict[str, Any]:
        with self._store.lock:
            self._operations.settle()
            self._tick()
            dump = self._store.dump()
            dump["operations"] = self._operations.dump()
        return dump

    # ------------------------------------------------------------------ dispatch

    def handle(
        self,
        method: str,
        raw_path: str,
        headers: Mapping[str, str],
        body: bytes,
        client_address: str | None = None,
    ) -> Response:
        """Answer one HTTP request (called by the HTTP handler threads)."""
        parts = urlsplit(raw_path)
        control = parts.path.lower().rstrip("/")
        if control == "/sandbox" or control.startswith("/sandbox/"):
            return self._control(method, control, body)
        if control == "/v1.0" or control.startswith("/v1.0/"):
            return self._graph(method, parts.path, parts.query, headers, body)
        try:
            response = self._arm(method, parts.path, parts.query, headers, body, client_address)
        except ArmError as exc:
            response = Response(exc.status, exc.body(), exc.headers)
        except Exception:
            logger.exception("ARM stand-in failed on %s %s", method, parts.path)
            error = ArmError(500, "InternalServerError", "The sandbox failed; see its log.")
            response = Response(500, error.body())
        request_id = headers.get("x-ms-client-request-id") or str(uuid.uuid4())
        response.headers.setdefault("x-ms-request-id", request_id)
        response.headers.setdefault("x-ms-correlation-request-id", request_id)
        self._record(method, parts.path, parts.query, body, response)
        return response

    def _graph(
        self, method: str, path: str, query: str, headers: Mapping[str, str], body: bytes
    ) -> Response:
        """Microsoft Graph's directory reads (see :mod:`sandbox.arm.directory`)."""
        with self._store.lock:
            response = directory.handle(
                self._store, method, path, query, headers, self._token, self.url
            )
        self._record(method, path, query, body, response)
        return response

    def _arm(
        self,
        method: str,
        path: str,
        query_string: str,
        headers: Mapping[str, str],
        body: bytes,
        client_address: str | None = None,
    ) -> Response:
        self._authenticate(headers)
        query = {
            key.lower(): value for key, value in parse_qsl(query_string, keep_blank_values=True)
        }
        api_version = query.get("api-version")
        if not api_version:
            message = (
                "The api-version query parameter (?api-version=) is required for all requests."
            )
            raise ArmError(400, "MissingApiVersionParameter", message)
        route, namespace, params = self._route(method, path)
        timing = self._faults.take_timing(method, path)
        if timing is not None and timing.stall_seconds:
            self._stalls_seen += 1
            time.sleep(timing.stall_seconds)
        with self._store.lock:
            self._operations.settle()
            self._tick()
            self._check_api_version(route, api_version)
            self._check_scope(params)
            fault = self._faults.take_error(method, path)
            if fault is not None:
                raise fault.error()
            extra = self._spend_write(method)
            request = Request(
                method=method,
                path=path,
                params=params,
                query=query,
                headers=headers,
                raw_body=body,
                api_version=api_version,
                namespace=namespace,
                base_url=self.url,
                store=self._store,
                operations=self._operations,
                take_operation_fault=lambda: self._faults.take_operation(method, path),
                client_address=client_address,
            )
            response = route.handler(request)
        response.headers.update(extra)
        if timing is not None and timing.reply_delay_seconds:
            self._stalls_seen += 1
            time.sleep(timing.reply_delay_seconds)
        return response

    def _tick(self) -> None:
        """Let the providers make their time-driven changes (the caller holds the lock)."""
        now = time.time()
        for tick in self._tickers:
            tick(self._store, now)

    def _run_clock(self) -> None:
        while not self._clock_stop.wait(_CLOCK_INTERVAL):
            try:
                with self._store.lock:
                    self._tick()
            except Exception:
                logger.exception("ARM stand-in clock failed")

    def _authenticate(self, headers: Mapping[str, str]) -> None:
        value = headers.get("Authorization")
        if not value:
            message = "Authentication failed. The 'Authorization' header is missing."
            raise ArmError(401, "AuthenticationFailed", message)
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            message = (
                "Authentication failed. The 'Authorization' header is provided in an invalid "
                "format."
            )
            raise ArmError(401, "AuthenticationFailedInvalidHeader", message)
        if not hmac.compare_digest(token.strip().encode(), self._token.encode()):
            raise ArmError(401, "InvalidAuthenticationToken", "The access token is invalid.")

    def _route(self, method: str, path: str) -> tuple[Route, str, dict[str, str]]:
        segments = split_path(path)
        matched = False
        for route, namespace in self._routes:
            params = route.match(segments)
            if params is None:
                continue
            if route.method == method.upper():
                return route, namespace, params
            matched = True
        if matched:
            message = f"The requested resource does not support http method '{method}'."
            raise ArmError(405, "MethodNotAllowed", message)
        raise _unknown_resource_type(segments)

    def _check_api_version(self, route: Route, api_version: str) -> None:
        if api_version in route.api_versions:
            return
        supported = sorted(route.api_versions, reverse=True)
        if not _API_VERSION_RE.fullmatch(api_version):
            message = (
                f"The api-version '{api_version}' is invalid. The supported versions are "
                f"'{','.join(supported)}'."
            )
            raise ArmError(400, "InvalidApiVersionParameter", message)
        locations = sorted({group.location for group in self._store.groups()})
        message = (
            f"No registered resource provider found for location '{self._store.default_location}' "
            f"and API version '{api_version}' for type '{route.resource_type}'. The supported "
            f"api-versions are '{', '.join(supported)}'. The supported locations are "
            f"'{', '.join(locations)}'."
        )
        raise ArmError(400, "NoRegisteredProviderFound", message)

    def _check_scope(self, params: Mapping[str, str]) -> None:
        subscription = params.get("subscriptionId")
        if subscription is not None and subscription.lower() != self._store.subscription_id.lower():
            raise subscription_not_found(subscription)
        group = params.get("resourceGroupName")
        if group is not None and self._store.group(group) is None:
            raise resource_group_not_found(group)

    def _spend_write(self, method: str) -> dict[str, str]:
        if method.upper() not in WRITE_METHODS:
            return {}
        wait = self._bucket.take()
        if wait > 0:
            seconds = max(1, math.ceil(wait)) if math.isfinite(wait) else 3600
            message = (
                f"Number of 'write' requests for subscription '{self._store.subscription_id}' "
                f"exceeded the limit. Please try again after '{seconds}' seconds."
            )
            raise ArmError(
                429, "SubscriptionRequestsThrottled", message, {"Retry-After": str(seconds)}
            )
        return {"x-ms-ratelimit-remaining-subscription-writes": str(self._bucket.remaining())}

    def _record(self, method: str, path: str, query: str, body: bytes, response: Response) -> None:
        error = response.body.get("error") if isinstance(response.body, dict) else None
        self._log.append(
            {
                "method": method,
                "path": path,
                "query": query,
                "status": response.status,
                "code": error.get("code") if isinstance(error, dict) else None,
                "time": time.time(),
                "body": _json_or_none(body),
            }
        )

    def _collect_routes(self) -> list[tuple[Route, str]]:
        routes: list[tuple[Route, str]] = []
        for provider in self._providers:
            routes.extend((route, provider.namespace) for route in provider.routes)
            if provider.uses_operations:
                routes.extend((route, provider.namespace) for route in operation_routes(provider))
        return routes

    # ------------------------------------------------------------------ /sandbox/ control

    def _control(self, method: str, path: str, body: bytes) -> Response:
        method = method.upper()
        if path == "/sandbox/faults":
            return self._control_faults(method, body)
        if path == "/sandbox/requests" and method == "GET":
            return Response(200, self.requests())
        if path == "/sandbox/requests" and method == "DELETE":
            self.clear_requests()
            return Response(204)
        if path == "/sandbox/state" and method == "GET":
            return Response(200, self.state())
        return Response(
            404, {"error": {"code": "NotFound", "message": f"No sandbox endpoint {method} {path}."}}
        )

    def _control_faults(self, method: str, body: bytes) -> Response:
        if method == "GET":
            return Response(200, self.faults())
        if method == "DELETE":
            self.clear_faults()
            return Response(204)
        if method != "POST":
            return Response(
                405, {"error": {"code": "MethodNotAllowed", "message": f"{method} not allowed."}}
            )
        try:
            spec = json.loads(body or b"null")
            if not isinstance(spec, dict):
                raise ValueError("the body must be a JSON object describing one fault")
            return Response(201, self.add_fault(**spec))
        except (ValueError, TypeError) as exc:
            return Response(400, {"error": {"code": "InvalidFault", "message": str(exc)}})


# ---------------------------------------------------------------------- operations endpoints


def operation_routes(provider: Provider) -> tuple[Route, ...]:
    """Status and result URLs of a provider's operations, with and without a resource group."""
    scopes = (
        "/subscriptions/{subscriptionId}",
        "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}",
    )
    routes = []
    for scope in scopes:
        base = f"{scope}/providers/{provider.namespace}/locations/{{location}}"
        routes.append(
            Route(
                "GET",
                f"{base}/operations/{{operationId}}",
                operation_status,
                provider.api_versions,
                "locations/operations",
            )
        )
        routes.append(
            Route(
                "GET",
                f"{base}/operationResults/{{operationId}}",
                operation_result,
                provider.api_versions,
                "locations/operationResults",
            )
        )
    return tuple(routes)


def operation_status(request: Request) -> Response:
    """``{"status": "InProgress"|"Succeeded"|"Failed"}``; each call counts as one poll."""
    operation = request.operations.poll(request.params["operationId"])
    if operation is None:
        raise ArmError(404, "NotFound", f"Operation {request.params['operationId']} not found.")
    headers = {}
    if operation.status == IN_PROGRESS:
        headers["Retry-After"] = str(request.operations.retry_after_for(operation))
    return Response(200, operation.status_body(), headers)


def operation_result(request: Request) -> Response:
    """202 while running, 204 when done, the operation's error when it failed."""
    operation = request.operations.poll(request.params["operationId"])
    if operation is None:
        raise ArmError(404, "NotFound", f"Operation {request.params['operationId']} not found.")
    if operation.status == IN_PROGRESS:
        headers = {
            "Location": operation.result_url,
            "Retry-After": str(request.operations.retry_after_for(operation)),
        }
        return Response(202, None, headers)
    if operation.status == SUCCEEDED:
        return Response(204)
    error = operation.status_body()["error"]
    raise ArmError(400, error["code"], error["message"])


# ---------------------------------------------------------------------- seed


def build_store(seed: Mapping[str, Any], providers: Sequence[Provider]) -> Store:
    """A store filled from a seed: resource groups first, then each provider's records.

    A seed that is incomplete or describes something Azure would refuse raises ``ValueError``.
    """
    try:
        store = Store(seed["subscriptionId"], seed.get("tenantId", ZERO_TENANT))
        groups = [
            (store.add_group(item["name"], item["location"]), item)
            for item in seed.get("resourceGroups", [])
        ]
        for provider in providers:
            if provider.load_seed is None:
                continue
            for group, group_seed in groups:
                provider.load_seed(store, group, group_seed)
        for provider in providers:
            if provider.load_root_seed is not None:
                provider.load_root_seed(store, seed)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"the seed lacks or misuses a required key: {exc}") from exc
    return store


# ---------------------------------------------------------------------- HTTP plumbing


class _Handler(BaseHTTPRequestHandler):
    """Reads one request at a time from a kept-alive TLS connection."""

    protocol_version = "HTTP/1.1"
    timeout = _CONNECTION_TIMEOUT
    server: _HttpServer

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        self._serve()

    do_PUT = do_DELETE = do_POST = do_PATCH = do_GET  # noqa: N815

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        response = self.server.arm.handle(
            self.command, self.path, self.headers, body, str(self.client_address[0])
        )
        payload = b""
        if response.body is not None and response.status != 204:
            payload = json.dumps(response.body).encode("utf-8")
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        if payload:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        if response.status != 204:
            self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        if payload:
            self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (base signature)
        logger.debug("%s %s", self.address_string(), format % args)


class _HttpServer(ThreadingHTTPServer):
    """A threading HTTP server that does the TLS handshake in each connection's thread and
    can close its kept-alive connections, so that ``stop()`` ends every thread promptly."""

    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], arm: ArmServer, context: ssl.SSLContext) -> None:
        self.arm = arm
        self.ssl_context = context
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        self._track(request)
        try:
            # Headers and body go out as separate writes; without NODELAY, Nagle and the
            # client's delayed ACK add ~40 ms to every response.
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            request.settimeout(_HANDSHAKE_TIMEOUT)
            connection = self.ssl_context.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError) as exc:
            logger.debug("TLS handshake with %s failed: %s", client_address, exc)
            self._untrack(request)
            return
        self._untrack(request)
        self._track(connection)
        try:
            self.RequestHandlerClass(connection, client_address, self)
        finally:
            self._untrack(connection)
            connection.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("connection from %s ended with an error", client_address, exc_info=True)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _track(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(connection)

    def _untrack(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)


def _server_context(tls: TlsFiles) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.cert_path, tls.key_path)
    return context


def _certificate_hosts(host: str) -> tuple[str, ...]:
    hosts = ["127.0.0.1", "localhost"]
    if host not in hosts and host not in ("", "0.0.0.0", "::"):
        hosts.append(host)
    return tuple(hosts)


def _unknown_resource_type(segments: Sequence[str]) -> ArmError:
    lowered = [segment.lower() for segment in segments]
    if "providers" in lowered:
        index = len(lowered) - 1 - lowered[::-1].index("providers")
        namespace = segments[index + 1] if index + 1 < len(segments) else ""
        kind = segments[index + 2] if index + 2 < len(segments) else ""
        message = f"The resource type '{kind}' could not be found in the namespace '{namespace}'."
    else:
        message = f"The resource path '/{'/'.join(segments)}' is not an ARM resource path."
    return ArmError(404, "InvalidResourceType", message)


def _json_or_none(body: bytes) -> Any:
    if not body:
        return None
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
