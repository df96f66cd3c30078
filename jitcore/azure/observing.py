"""Reporting every HTTP answer from Azure Resource Manager to a :class:`~jitcore.observe.Observer`.

An azure-core pipeline policy placed after the retry policy, so it sees each attempt,
including those azure-core retries on its own (429 with Retry-After, 5xx) and the polls
of long-running operations, none of which reach jitbot's own retry loop.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from azure.core.pipeline import PipelineRequest, PipelineResponse
from azure.core.pipeline.policies import SansIOHTTPPolicy

from jitcore.azure.clients import AzureTarget
from jitcore.observe import Observer

NO_ANSWER = 0
"""The status reported when a call got no HTTP answer at all (connection failed)."""


class ObservingPolicy(SansIOHTTPPolicy[Any, Any]):
    def __init__(self, observer: Observer) -> None:
        self._observer = observer

    def on_response(
        self, request: PipelineRequest[Any], response: PipelineResponse[Any, Any]
    ) -> None:
        self._observer.arm_response(request.http_request.method, response.http_response.status_code)

    def on_exception(self, request: PipelineRequest[Any]) -> None:
        self._observer.arm_response(request.http_request.method, NO_ANSWER)


def observed(target: AzureTarget, observer: Observer) -> AzureTarget:
    """A copy of ``target`` whose clients report each ARM answer to ``observer``."""
    kwargs = dict(target.client_kwargs)
    kwargs["per_retry_policies"] = [
        *kwargs.get("per_retry_policies", []),
        ObservingPolicy(observer),
    ]
    return dataclasses.replace(target, client_kwargs=kwargs)
