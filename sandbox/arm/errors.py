"""ARM error responses.

Every failure the stand-in reports is an :class:`ArmError`; the server turns it into the body
ARM uses everywhere, ``{"error": {"code": "...", "message": "..."}}``, with its status and
headers. The helpers below build the errors that ARM itself (not a resource provider) answers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

RESOURCE_NOT_FOUND_HELP = "For more details please go to https://aka.ms/ARMResourceNotFoundFix"


class ArmError(Exception):
    """A failed ARM call: HTTP status, ARM error code and message, extra response headers."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


def bad_request(code: str, message: str) -> ArmError:
    return ArmError(400, code, message)


def invalid_request_format() -> ArmError:
    return ArmError(400, "InvalidRequestFormat", "Cannot parse the request.")


def subscription_not_found(subscription_id: str) -> ArmError:
    return ArmError(
        404, "SubscriptionNotFound", f"The subscription '{subscription_id}' could not be found."
    )


def resource_group_not_found(name: str) -> ArmError:
    return ArmError(404, "ResourceGroupNotFound", f"Resource group '{name}' could not be found.")


def resource_not_found(resource_type: str, name: str, resource_group: str) -> ArmError:
    """ARM's answer for a missing top-level resource of ``resource_type`` (namespace/type)."""
    message = (
        f"The Resource '{resource_type}/{name}' under resource group '{resource_group}' was not "
        f"found. {RESOURCE_NOT_FOUND_HELP}"
    )
    return ArmError(404, "ResourceNotFound", message)


def parent_resource_not_found(action: str, child_type: str, parent_id: str) -> ArmError:
    """ARM's answer when the parent of a nested resource is missing."""
    message = (
        f"Failed to perform '{action}' on resource(s) of type '{child_type}', because the parent "
        f"resource '{parent_id}' could not be found."
    )
    return ArmError(404, "ParentResourceNotFound", message)


def child_not_found(resource_id: str) -> ArmError:
    """The network resource provider's answer for a missing child of an existing parent."""
    return ArmError(404, "NotFound", f"Resource {resource_id} not found.")
