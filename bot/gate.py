"""The checks in front of commands and clicks: who the Slack user is in Entra ID, then
whether their Azure roles allow what they ask (see ``jitcore.access`` for the actions).

They need several calls to Slack, Microsoft Graph and Azure Resource Manager, which can
take longer than the three seconds Slack gives a slash command's ack. So a gated command
is acked at once ("checking your Azure access…") after the checks that need no network
(grammar, policy), and the rest runs on the bot's executor; the answer goes to the
command's ``response_url``, which works in channels, private channels and DMs alike
(``chat.postEphemeral`` needs the bot in the conversation). Clicks already run in lazy
listeners, so the approval check runs there, reading Azure afresh.

Every refusal is audited and answered with text from ``bot.messages``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from bot import audit, messages
from bot.commands import (
    AdminMapCommand,
    AdminUnmapCommand,
    AuditCommand,
    ExtendCommand,
    ListCommand,
    PolicyProtectCommand,
    PolicyUnprotectCommand,
    ScanCommand,
    StatusCommand,
    WhyCommand,
)
from bot.identity import IdentityRefused, IdentityResolver, IdentityUnavailable, ResolvedPrincipal
from jitcore.access import AccessChecker, AccessRefused, Operation, VmTarget
from jitcore.azure.authorization import AuthorizationGateway
from jitcore.azure.clients import AzureTarget
from jitcore.azure.identity import GraphDirectory
from jitcore.engine import Engine
from jitcore.errors import CloudError, NotAuthorized, UnknownVm
from jitcore.model import FINAL_STATUSES, AccessRequest, RequestStatus
from jitcore.policy import load_principal_mappings
from jitcore.principals import PrincipalStore

log = logging.getLogger(__name__)

GATED = (
    ListCommand,
    StatusCommand,
    ExtendCommand,
    WhyCommand,
    AdminMapCommand,
    AdminUnmapCommand,
    PolicyProtectCommand,
    PolicyUnprotectCommand,
    ScanCommand,
    AuditCommand,
)
STATUS_SHOWN = (RequestStatus.OPENING, RequestStatus.ACTIVE, RequestStatus.CLOSING)
"""What ``/jit status`` counts as open on a VM now."""
ADMIN_ONLY = (PolicyProtectCommand, PolicyUnprotectCommand, ScanCommand)
"""Commands that need the configure actions and then run as if there were no gate."""
AUDIT_DEFAULT_LOOKBACK = timedelta(days=7)
"""How far back ``/jit audit`` looks when no since is given."""


class GateRefusal(NotAuthorized):
    """A refusal whose chat text is ready (built by ``bot.messages``, escaped)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class AccessGate:
    def __init__(self, engine: Engine, identity: IdentityResolver, checker: AccessChecker) -> None:
        self.engine = engine
        self.identity = identity
        self.checker = checker
        self.closers: list[Callable[[], None]] = []

    def close(self) -> None:
        for close in self.closers:
            close()

    @property
    def store(self) -> Any:
        return self.engine.store

    # -- slash commands ------------------------------------------------------------------

    def ack_text(self, command: Any) -> str:
        if isinstance(command, WhyCommand | StatusCommand):
            return messages.checking_access(f"to {command.vm}")
        if isinstance(command, ListCommand):
            return messages.checking_access("to your requests' VMs")
        if isinstance(command, ExtendCommand):
            return messages.checking_access(f"to the VM of request #{command.request_id}")
        if isinstance(command, AuditCommand):
            return messages.checking_access("to the audit log")
        return messages.checking_access("to administer jitbot")

    def run(self, command: Any, user_id: str) -> str | None:
        """Check ``command`` for ``user_id``: a refusal or a full answer, or None to go on
        with the command as if there were no gate."""
        try:
            if isinstance(command, ListCommand):
                self._authorize_list(user_id)
                return None
            if isinstance(command, StatusCommand):
                return self._status(user_id, command.vm)
            if isinstance(command, ExtendCommand):
                self._authorize_extend_command(user_id, command.request_id)
                return None
            if isinstance(command, WhyCommand):
                return self._why(user_id, command)
            if isinstance(command, ADMIN_ONLY):
                self._require_admin(user_id)
                return None
            if isinstance(command, AuditCommand):
                return self._audit(user_id, command)
            if isinstance(command, AdminMapCommand):
                return self._admin_map(user_id, command)
            assert isinstance(command, AdminUnmapCommand)
            return self._admin_unmap(user_id, command)
        except GateRefusal as exc:
            return exc.text

    def _authorize_request(self, user_id: str, vm_text: str) -> None:
        principal = self._principal(user_id)
        vm = self._vm(self._policy_vm_name(vm_text))
        self._require(user_id, principal, Operation.REQUEST, vm, "request")

    def request_refusals(self, user_id: str, vm_texts: list[str]) -> dict[str, str]:
        """The refusal text for each VM of ``vm_texts`` that ``user_id`` may not request
        (the checks of a one-VM ``/jit request``, run for each VM); empty if all may be."""
        refusals: dict[str, str] = {}
        for vm_text in vm_texts:
            try:
                self._authorize_request(user_id, vm_text)
            except GateRefusal as exc:
                refusals[vm_text] = exc.text
        return refusals

    def requestable_vms(self, user_id: str, vm_names: list[str]) -> list[str]:
        """Those of ``vm_names`` that ``user_id`` holds the request actions at, in order.

        Raises GateRefusal when the user's identity cannot be resolved; a VM whose check
        fails (not found, Azure unavailable) is left out.
        """
        principal = self._principal(user_id)
        allowed = []
        for name in vm_names:
            try:
                vm = self.checker.vm(name)
                if self.checker.check(principal.object_id, Operation.REQUEST, vm).allowed:
                    allowed.append(name)
            except CloudError as exc:
                log.warning("could not check %s for %s: %s", name, user_id, exc.message)
        return allowed

    def _authorize_list(self, user_id: str) -> None:
        principal = self._principal(user_id)
        open_statuses = tuple(s for s in RequestStatus if s not in FINAL_STATUSES)
        names = {
            r.vm_name.lower(): r.vm_name for r in self.engine.requests_of(user_id, open_statuses)
        }
        for name in names.values():
            self._require(user_id, principal, Operation.READ, self._vm(name), "read")

    def home_refusal(self, user_id: str) -> str | None:
        """Why ``user_id`` may not see their requests on the home tab (the checks of
        ``/jit list``), or None."""
        try:
            self._authorize_list(user_id)
        except GateRefusal as exc:
            return exc.text
        return None

    def _status(self, user_id: str, vm_text: str) -> str:
        """``/jit status``: the read actions at the VM, then who has what open there."""
        principal = self._principal(user_id)
        vm_name = self._policy_vm_name(vm_text)
        self._require(user_id, principal, Operation.READ, self._vm(vm_name), "read")
        requests = self.engine.requests_on(vm_name, STATUS_SHOWN)
        return messages.status_text(vm_name, requests, self.engine.clock())

    def _why(self, user_id: str, command: WhyCommand) -> str:
        principal = self._principal(user_id)
        try:
            policy = self.engine.policy_for(command.vm)
        except UnknownVm:
            return messages.why_text(principal, command.vm, None, None, command.port, user_id)
        vm_name = policy.match(command.vm) or command.vm
        vm = self._vm(vm_name)
        try:
            decision = self.checker.check(principal.object_id, Operation.REQUEST, vm)
        except CloudError as exc:
            return messages.access_check_failed(exc.message)
        text = messages.why_text(principal, vm_name, decision, policy, command.port, user_id)
        refused = self.engine.policies.refused.get(policy.name)
        if refused is not None:
            text += "\n" + messages.policy_refused_line(policy.name, refused)
        return text

    def _admin_map(self, user_id: str, command: AdminMapCommand) -> str:
        self._require_admin(user_id)
        try:
            mapped = self.identity.map(command.user_id, command.target, actor=user_id)
        except IdentityRefused as exc:
            self.store.audit(
                "principal_map_refused",
                user_id,
                None,
                slack_user=command.user_id,
                reason=exc.reason,
            )
            return messages.identity_refused(
                exc.user_id, exc.reason, exc.target, "admin", hint=False
            )
        except IdentityUnavailable:
            return messages.identity_unavailable()
        self.store.audit(
            "principal_mapped",
            user_id,
            None,
            slack_user=command.user_id,
            target=command.target,
            object_id=mapped.object_id,
        )
        return messages.mapped_text(command.user_id, mapped.upn, mapped.object_id)

    def _admin_unmap(self, user_id: str, command: AdminUnmapCommand) -> str:
        self._require_admin(user_id)
        removed = self.identity.unmap(command.user_id)
        self.store.audit("principal_unmapped", user_id, None, slack_user=command.user_id)
        return messages.unmapped_text(command.user_id, removed)

    def _audit(self, user_id: str, command: AuditCommand) -> str:
        """``/jit audit``: admins (the configure actions, as for ``admin``) read it all;
        an approver reads what concerns the VMs of the policies they approve."""
        principal = self._principal(user_id)
        now = self.engine.clock()
        since = (
            now - command.since
            if isinstance(command.since, timedelta)
            else command.since or now - AUDIT_DEFAULT_LOOKBACK
        )
        visible = None
        vm_name = None
        if command.vm is not None:
            vm_name = self._policy_vm_name(command.vm)
            policy = self.engine.policy_for(vm_name)
            if not self.engine.approves_for(user_id, policy) and not self._is_admin(
                user_id, principal
            ):
                self.store.audit("audit_refused", user_id, None, vm=vm_name)
                return messages.audit_refused(vm_name, policy.name)
            scope = f"*{messages.escape(vm_name)}*"
        else:
            if not self._is_admin(user_id, principal):
                approved = [
                    p for p in self.engine.policies.policies if self.engine.approves_for(user_id, p)
                ]
                if not approved:
                    self.store.audit("audit_refused", user_id, None)
                    return messages.audit_refused(None, None)

                def visible(name: str | None) -> bool:
                    return name is not None and any(p.match(name) for p in approved)

            scope = messages.mention(command.user_id) if command.user_id else "every VM"
        entries = audit.recent_events(self.store, since, vm_name, command.user_id, visible)
        return messages.audit_text(entries, scope, since, limited=visible is not None)

    def _is_admin(self, user_id: str, principal: ResolvedPrincipal) -> bool:
        """Whether the user holds the configure actions; a failed check counts as no."""
        try:
            return bool(self.checker.check(principal.object_id, Operation.CONFIGURE, None).allowed)
        except CloudError as exc:
            log.warning("RBAC check for %s failed: %s", user_id, exc.message)
            return False

    def _require_admin(self, user_id: str) -> None:
        principal = self._principal(user_id)
        self._require(user_id, principal, Operation.CONFIGURE, None, "configure")

    # -- clicks --------------------------------------------------------------------------

    def authorize_approval(self, request: AccessRequest, approver_id: str) -> Any | None:
        """Raise NotAuthorized unless ``approver_id`` may approve ``request`` now; return
        the VM's network as read for this click (None once the request is not pending),
        so that opening access need not read it again.

        The policy's rule first (an approver, not the requester); then, while the request
        is pending, Azure read afresh: the approver must hold the request actions at the
        VM, and the requester must still hold them. The two checks run side by side
        (``AccessChecker.check_fresh_together``); the approver's refusal is the one
        reported when both fail, as it was when they ran one after the other.
        """
        try:
            self.engine.authorize_decision(request, approver_id)
        except NotAuthorized as exc:
            self.store.audit("decision_refused", approver_id, request.id, reason=exc.message)
            raise
        if request.status != RequestStatus.PENDING:
            return None
        vm, network = self._vm_and_network(request.vm_name)
        approver = self._principal(approver_id, request.id)
        requester = self._requester_or_error(request)
        checks = [(approver.object_id, Operation.REQUEST, vm)]
        if isinstance(requester, ResolvedPrincipal):
            checks.append((requester.object_id, Operation.REQUEST, vm))
        answers = self.checker.check_fresh_together(checks)
        self._refuse_unless_allowed(
            approver_id, approver, Operation.REQUEST, vm, "approve", request.id, answers[0]
        )
        self._requester_still_allowed(request, vm, requester, answers[1:])
        return network

    def _requester_or_error(self, request: AccessRequest) -> ResolvedPrincipal | Exception:
        """The requester's principal, or why it could not be resolved (reported only if
        the approver's own check passes)."""
        try:
            return self.identity.resolve(request.requester_id)
        except (IdentityRefused, IdentityUnavailable, CloudError) as exc:
            return exc

    def _requester_still_allowed(
        self,
        request: AccessRequest,
        vm: VmTarget,
        requester: ResolvedPrincipal | Exception,
        answers: list[Any],
    ) -> None:
        requester_id = request.requester_id
        try:
            if isinstance(requester, Exception):
                raise requester
            [answer] = answers
            if isinstance(answer, CloudError):
                raise answer
            if not answer.allowed:
                raise AccessRefused(Operation.REQUEST, answer)
        except IdentityRefused as exc:
            self._audit_refusal(requester_id, request.id, "requester_identity", exc.reason)
            text = messages.requester_unmapped(requester_id, exc.reason, exc.target, exc.source)
            raise GateRefusal(text) from None
        except AccessRefused as exc:
            assert isinstance(requester, ResolvedPrincipal)
            self._audit_access(requester_id, request.id, "request", requester.object_id, exc)
            raise GateRefusal(
                messages.requester_lost_access(requester_id, vm.name, exc.decision)
            ) from None
        except (IdentityUnavailable, CloudError) as exc:
            log.warning("re-checking the requester of %s failed: %s", request.id, exc)
            raise GateRefusal(messages.identity_unavailable()) from None

    def _authorize_extend_command(self, user_id: str, request_id: int) -> None:
        request = self.store.get_request(request_id)
        if request is None:
            self.store.audit("extend_refused", user_id, None, reason="no such request")
            raise GateRefusal(
                messages.error_text(
                    f"there is no request #{request_id} that you requested or approve"
                )
            )
        self.authorize_extension(request, user_id)

    def authorize_extension(self, request: AccessRequest, user_id: str) -> None:
        """Raise GateRefusal unless ``user_id`` may extend ``request``: the requester or an
        approver of its policy, holding the request actions at the VM in Azure."""
        try:
            self.engine.authorize_extension(request, user_id)
        except NotAuthorized as exc:
            self.store.audit("extend_refused", user_id, request.id, reason=exc.message)
            raise GateRefusal(messages.error_text(exc.message)) from None
        principal = self._principal(user_id, request.id)
        vm = self._vm(request.vm_name)
        self._require(user_id, principal, Operation.REQUEST, vm, "extend", request.id)

    # -- helpers -------------------------------------------------------------------------

    def _principal(self, user_id: str, request_id: int | None = None) -> ResolvedPrincipal:
        try:
            return self.identity.resolve(user_id)
        except IdentityRefused as exc:
            self._audit_refusal(user_id, request_id, "identity", exc.reason)
            raise GateRefusal(
                messages.identity_refused(exc.user_id, exc.reason, exc.target, exc.source)
            ) from None
        except IdentityUnavailable as exc:
            log.warning("identity of %s unavailable: %s", user_id, exc.message)
            raise GateRefusal(messages.identity_unavailable()) from None

    def _require(
        self,
        user_id: str,
        principal: ResolvedPrincipal,
        operation: Operation,
        vm: VmTarget | None,
        verb: str,
        request_id: int | None = None,
        *,
        fresh: bool = False,
    ) -> None:
        try:
            answer: Any = self.checker.check(principal.object_id, operation, vm, fresh=fresh)
        except CloudError as exc:
            answer = exc
        self._refuse_unless_allowed(user_id, principal, operation, vm, verb, request_id, answer)

    def _refuse_unless_allowed(
        self,
        user_id: str,
        principal: ResolvedPrincipal,
        operation: Operation,
        vm: VmTarget | None,
        verb: str,
        request_id: int | None,
        answer: Any,
    ) -> None:
        """Raise GateRefusal (audited) unless ``answer``, a decision or the CloudError of
        the check, allows the operation."""
        if isinstance(answer, CloudError):
            log.warning("RBAC check for %s failed: %s", user_id, answer.message)
            raise GateRefusal(messages.access_check_failed(answer.message))
        if not answer.allowed:
            refused = AccessRefused(operation, answer)
            self._audit_access(user_id, request_id, verb, principal.object_id, refused)
            vm_name = vm.name if vm is not None else None
            raise GateRefusal(messages.access_refused(verb, vm_name, principal.upn, answer))

    def _vm_and_network(self, name: str) -> tuple[VmTarget, Any]:
        try:
            return self.checker.locate_fresh(name)
        except CloudError as exc:
            raise GateRefusal(messages.error_text(exc.message)) from None

    def _vm(self, name: str, *, fresh: bool = False) -> VmTarget:
        try:
            return self.checker.vm(name, fresh=fresh)
        except CloudError as exc:
            raise GateRefusal(messages.error_text(exc.message)) from None

    def _policy_vm_name(self, vm_text: str) -> str:
        try:
            return self.engine.policy_for(vm_text).match(vm_text) or vm_text
        except UnknownVm as exc:
            raise GateRefusal(messages.error_text(exc.message)) from None

    def _audit_refusal(self, user_id: str, request_id: int | None, kind: str, reason: str) -> None:
        self.store.audit("access_refused", user_id, request_id, check=kind, reason=reason)

    def _audit_access(
        self,
        user_id: str,
        request_id: int | None,
        verb: str,
        object_id: str,
        exc: AccessRefused,
    ) -> None:
        decision = exc.decision
        self.store.audit(
            "access_refused",
            user_id,
            request_id,
            check=verb,
            object_id=object_id,
            scope=decision.scope,
            missing=list(decision.missing),
            denied_by=sorted({deny for _, deny in decision.denied}),
        )


def build_gate(settings: Any, engine: Engine, client: Any, target: AzureTarget) -> AccessGate:
    """The gate and its clients (Graph, Microsoft.Authorization) from the bot's settings.

    Graph uses the same credential as ARM and, when set, the same CA bundle (the sandbox
    serves both on one HTTPS server).
    """
    directory = GraphDirectory(target.credential, settings.graph_url, target.ca_bundle)
    authorization = AuthorizationGateway(target, definition_ttl=settings.rbac_cache_seconds)
    checker = AccessChecker(
        authorization,
        directory,
        engine.cloud,
        target.subscription_id,
        ttl=settings.rbac_cache_seconds,
    )
    identity = IdentityResolver(
        client,
        directory,
        PrincipalStore(engine.store),
        load_principal_mappings(settings.policy_file),
        ttl=timedelta(seconds=settings.identity_cache_seconds),
    )
    gate = AccessGate(engine, identity, checker)
    gate.closers = [checker.close, directory.close, authorization.close]
    return gate
