"""JIT policies: which VMs may be requested, for which ports, how long, from where, and
who approves.

Policies are written in YAML (see ``docs/policies.md``), validated here, and stored in
the database with a version number, so every request records the exact policy it was
checked against.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from jitcore.defender import check_defender_source
from jitcore.durations import format_duration, parse_duration
from jitcore.errors import (
    DurationOutOfBounds,
    InvalidSource,
    JitError,
    PortNotAllowed,
    UnknownVm,
)
from jitcore.sources import (
    DEFAULT_WIDEST_V4,
    DEFAULT_WIDEST_V6,
    canonical_source,
    check_width,
    is_private,
)

DEFENDER_MIN_DURATION = timedelta(minutes=5)
DEFENDER_MAX_DURATION = timedelta(hours=24)
DEFAULT_MAX_DURATION = timedelta(hours=3)
_SLACK_USER_ID = re.compile(r"[UW][A-Z0-9]{2,}")
_SLACK_USER_GROUP_ID = re.compile(r"S[A-Z0-9]{2,}")
MAX_PENDING_TIMEOUT = timedelta(days=7)
_PRINCIPAL_TARGET = re.compile(
    r"[^@\s]+@[^@\s]+\.[^@\s]+|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)


def is_user_group(approver: str) -> bool:
    """Whether an ``approvers`` entry names a Slack user group (S…) rather than a user."""
    return bool(_SLACK_USER_GROUP_ID.fullmatch(approver))


class PolicyError(JitError):
    """A policy file or policy body is invalid; the message names the setting."""


def _duration(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int):
        return timedelta(seconds=value)
    return parse_duration(str(value))


class PortRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    port: int = Field(ge=0, le=65535)
    protocol: Literal["Tcp", "Udp", "*"] = "Tcp"
    max_duration: timedelta = DEFAULT_MAX_DURATION

    @field_validator("max_duration", mode="before")
    @classmethod
    def _parse_max(cls, value: Any) -> timedelta:
        return _duration(value)

    @field_validator("max_duration")
    @classmethod
    def _within_defender_bounds(cls, value: timedelta) -> timedelta:
        if value > DEFENDER_MAX_DURATION:
            raise ValueError("max_duration may be at most 24h (the bound Defender for Cloud uses)")
        return value


class AutoApproveRule(BaseModel):
    """A request this rule matches opens without waiting for an approver.

    Every condition given must hold: each requested port is in ``ports`` (empty: any of
    the policy's ports), the source lies inside one of ``sources`` (empty: any source the
    policy allows), the duration is at most ``max_duration`` (unset: the policy's
    maximum). ``max_per_day`` bounds how many requests of one requester this rule
    approves in any 24 hours; past it, requests wait for an approver as usual.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    ports: list[int] = Field(default_factory=list)
    sources: list[str] = Field(default_factory=list)
    max_duration: timedelta | None = None
    max_per_day: int = Field(ge=1, le=1000)

    @field_validator("max_duration", mode="before")
    @classmethod
    def _parse_max(cls, value: Any) -> timedelta | None:
        return None if value is None else _duration(value)

    @field_validator("sources")
    @classmethod
    def _canonical_sources(cls, value: list[str]) -> list[str]:
        return [str(ipaddress.ip_network(v, strict=True)) for v in value]

    def matches(self, ports: tuple[int, ...], source_prefix: str, duration: timedelta) -> bool:
        """Whether a request (already allowed by the policy) meets every condition."""
        if self.ports and not set(ports) <= set(self.ports):
            return False
        if self.sources and not _within(source_prefix, self.sources):
            return False
        return self.max_duration is None or duration <= self.max_duration


class Policy(BaseModel):
    """One policy as written in the YAML file."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    vms: list[str] = Field(min_length=1)
    ports: list[PortRule] = Field(min_length=1)
    min_duration: timedelta = DEFENDER_MIN_DURATION
    allowed_sources: list[str] = Field(default_factory=list)
    widest_source_v4: int = Field(default=DEFAULT_WIDEST_V4, ge=1, le=32)
    widest_source_v6: int = Field(default=DEFAULT_WIDEST_V6, ge=1, le=128)
    allow_private_sources: bool = True
    approvers: list[str] = Field(min_length=1)
    """Slack user ids (U…, W…) and user group ids (S…); a group's members are read from
    Slack each time someone decides."""
    approvals_required: Literal[1, 2] = 1
    """How many distinct approvers, none of them the requester, must approve."""
    auto_approve: list[AutoApproveRule] = Field(default_factory=list)
    pending_timeout: timedelta | None = None
    """How long a request waits for a decision before it expires (unset: the
    deployment's ``JITBOT_PENDING_TIMEOUT_SECONDS``)."""
    remind_after: timedelta | None = None
    """When a still-undecided request's approvers are reminded, once, in its thread."""
    approval_channel: str = Field(min_length=1)
    enforcement: Literal["nsg", "defender"] = "nsg"
    """``nsg``: jitbot writes NSG rules itself. ``defender``: Defender for Cloud's JIT
    opens the ports (see ``docs/defender.md``)."""
    firewall: str | None = None
    """Resource id of a classic Azure Firewall in front of the VMs: access is then a DNAT
    rule on it plus NSG allows from the firewall's private address."""
    firewall_ports: dict[int, int] = Field(default_factory=dict)
    """VM port -> public port on the firewall (default: the same port)."""

    @field_validator("min_duration", mode="before")
    @classmethod
    def _parse_min(cls, value: Any) -> timedelta:
        return _duration(value)

    @field_validator("allowed_sources")
    @classmethod
    def _canonical_sources(cls, value: list[str]) -> list[str]:
        return [str(ipaddress.ip_network(v, strict=True)) for v in value]

    @field_validator("approvers")
    @classmethod
    def _approver_ids(cls, value: list[str]) -> list[str]:
        for entry in value:
            if not (_SLACK_USER_ID.fullmatch(entry) or _SLACK_USER_GROUP_ID.fullmatch(entry)):
                raise ValueError(
                    f"{entry!r} is neither a Slack user id (like U0123ABCD) nor a user group "
                    "id (like S0123ABCD)"
                )
        if len(value) != len(set(value)):
            raise ValueError("each approver may be listed once")
        return value

    @field_validator("pending_timeout", "remind_after", mode="before")
    @classmethod
    def _parse_waits(cls, value: Any) -> timedelta | None:
        return None if value is None else _duration(value)

    @field_validator("pending_timeout")
    @classmethod
    def _pending_bounds(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and not timedelta(0) < value <= MAX_PENDING_TIMEOUT:
            raise ValueError("pending_timeout must be above zero and at most 7d")
        return value

    @model_validator(mode="after")
    def _approval_rules(self) -> Policy:
        if self.approvals_required == 2 and not self._two_approvers_possible():
            raise ValueError(
                "approvals_required: 2 needs at least two approvers (two user ids, or a user group)"
            )
        if self.remind_after is not None:
            if self.pending_timeout is None:
                raise ValueError("remind_after needs pending_timeout in the same policy")
            if self.remind_after >= self.pending_timeout:
                raise ValueError("remind_after must be shorter than pending_timeout")
        names = [rule.name.lower() for rule in self.auto_approve]
        if len(names) != len(set(names)):
            raise ValueError("auto_approve: each rule name may be used once")
        known = {rule.port for rule in self.ports}
        for rule in self.auto_approve:
            unknown = sorted(set(rule.ports) - known)
            if unknown:
                raise ValueError(
                    f"auto_approve {rule.name}: ports {unknown} are not in this policy's ports"
                )
        return self

    def _two_approvers_possible(self) -> bool:
        users = [a for a in self.approvers if _SLACK_USER_ID.fullmatch(a)]
        return len(users) >= 2 or len(users) < len(self.approvers)

    @property
    def approver_groups(self) -> list[str]:
        return [a for a in self.approvers if is_user_group(a)]

    def auto_rule_for(self, checked: CheckedRequest) -> AutoApproveRule | None:
        """The first auto-approval rule the request meets, if any (before the daily limit)."""
        return next(
            (
                rule
                for rule in self.auto_approve
                if rule.matches(checked.ports, checked.source_prefix, checked.duration)
            ),
            None,
        )

    @model_validator(mode="after")
    def _min_below_max(self) -> Policy:
        longest = max(rule.max_duration for rule in self.ports)
        if self.min_duration <= timedelta(0) or self.min_duration > longest:
            raise ValueError(
                "min_duration must be above zero and not above any port's max_duration"
            )
        ports = [rule.port for rule in self.ports]
        if len(ports) != len(set(ports)):
            raise ValueError("each port may be listed once")
        if self.enforcement == "defender":
            self._check_defender_bounds()
        return self

    def _check_defender_bounds(self) -> None:
        """What Defender for Cloud's JIT cannot express is refused at load."""
        if self.firewall or self.firewall_ports:
            raise ValueError(
                "enforcement defender cannot be combined with firewall: Defender for Cloud "
                "manages its own firewall rules; use enforcement nsg for a classic firewall"
            )
        too_wide = [
            source
            for source in self.allowed_sources
            if ipaddress.ip_network(source).prefixlen
            < (self.widest_source_v4 if ":" not in source else self.widest_source_v6)
        ]
        if too_wide:
            raise ValueError(
                "with enforcement defender, a request's source must equal an allowed source, "
                "so none may be wider than widest_source_v4/widest_source_v6: "
                + ", ".join(too_wide)
            )
        short = [rule.port for rule in self.ports if rule.max_duration < DEFENDER_MIN_DURATION]
        if short:
            raise ValueError(
                "with enforcement defender, each max_duration must be between 5m and 24h; "
                "too short for port(s) " + ", ".join(str(p) for p in short)
            )

    def match(self, vm: str) -> str | None:
        """The VM's name as the policy spells it, if the policy covers ``vm``.

        ``vm`` may be a name (any case) or a full resource id.
        """
        wanted = vm.strip().lower().rstrip("/")
        for entry in self.vms:
            name = entry.rsplit("/", 1)[-1]
            if wanted in (entry.lower(), name.lower()) or (
                "/" in wanted and wanted.rsplit("/", 1)[-1] == name.lower() and "/" not in entry
            ):
                return name
        return None

    def port_rule(self, port: int) -> PortRule | None:
        return next((rule for rule in self.ports if rule.port == port), None)

    def body(self) -> dict[str, Any]:
        """A JSON-safe body, stored with the version and compared to detect edits."""
        return self.model_dump(mode="json")


class PolicyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    policies: list[Policy] = Field(min_length=1)
    principals: dict[str, str] = Field(default_factory=dict)
    """Slack user id -> Entra ID userPrincipalName or object id (see ``principal_mappings``)."""

    @field_validator("principals")
    @classmethod
    def _mappings(cls, value: dict[str, str]) -> dict[str, str]:
        for user_id, target in value.items():
            if not _SLACK_USER_ID.fullmatch(user_id):
                raise ValueError(f"{user_id!r} is not a Slack user id (like U0123ABCD)")
            if not _PRINCIPAL_TARGET.fullmatch(target.strip()):
                raise ValueError(
                    f"{user_id}: {target!r} is neither a userPrincipalName nor an object id"
                )
        return {user_id: target.strip() for user_id, target in value.items()}

    @model_validator(mode="after")
    def _unique_names(self) -> PolicyFile:
        names = [p.name.lower() for p in self.policies]
        if len(names) != len(set(names)):
            raise ValueError("policy names must be unique")
        return self


def parse_policies(data: Any, origin: str = "policy file") -> list[Policy]:
    """Validate raw policy data, raising PolicyError that names the offending setting."""
    try:
        return PolicyFile.model_validate(data).policies
    except ValidationError as exc:
        raise _policy_error(exc, origin) from None


def _policy_error(exc: ValidationError, origin: str) -> PolicyError:
    problems = []
    for err in exc.errors():
        where = ".".join(str(part) for part in err["loc"]) or "(top level)"
        problems.append(f"{where}: {err['msg']}")
    return PolicyError(f"{origin} is invalid: " + "; ".join(problems))


def load_policy_file(path: str | Path) -> list[Policy]:
    return parse_policies(_read_yaml(Path(path)), origin=f"policy file {path}")


def _read_yaml(file: Path) -> Any:
    try:
        return yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise PolicyError(f"cannot read policy file {file}: {exc}") from None


def principal_mappings(data: Any, origin: str = "policy file") -> dict[str, str]:
    """The optional top-level ``principals`` map: Slack user id -> Entra ID user.

    Values are a userPrincipalName or an object id, as for ``/jit admin map``. The whole
    file is validated, so a mapping is never taken from a file whose policies are broken.
    """
    try:
        return PolicyFile.model_validate(data).principals
    except ValidationError as exc:
        raise _policy_error(exc, origin) from None


def load_principal_mappings(path: str | Path) -> dict[str, str]:
    return principal_mappings(_read_yaml(Path(path)), origin=f"policy file {path}")


@dataclass(frozen=True)
class CheckedRequest:
    """A request that the policy allows, in canonical form."""

    policy: Policy
    vm_name: str
    ports: tuple[int, ...]
    protocol: str
    duration: timedelta
    source_prefix: str


def find_policy(policies: list[Policy], vm: str) -> Policy:
    for policy in policies:
        if policy.match(vm) is not None:
            return policy
    known = policy_vm_names(policies)
    raise UnknownVm(vm, known, closest_vm_name(vm, known))


def policy_vm_names(policies: list[Policy]) -> list[str]:
    """Every VM name the policies cover, as they spell it, sorted."""
    return sorted({entry.rsplit("/", 1)[-1] for p in policies for entry in p.vms})


def closest_vm_name(typed: str, known: list[str]) -> str | None:
    """The policy VM name closest to ``typed`` (a name or a resource id), if one is close
    enough to be a likely typo; compared without regard to case."""
    wanted = typed.strip().rstrip("/").rsplit("/", 1)[-1].lower()
    by_lower = {name.lower(): name for name in known}
    close = difflib.get_close_matches(wanted, list(by_lower), n=1, cutoff=0.75)
    return by_lower[close[0]] if close else None


def check_request(
    policies: list[Policy], vm: str, ports: list[int], duration: timedelta, source: str
) -> CheckedRequest:
    """Check a request against the policy covering the VM; raise RequestRejected if not allowed."""
    policy, vm_name, protocol = check_target(policies, vm, ports, duration)
    prefix = check_source(policy, source, vm_name)
    return CheckedRequest(policy, vm_name, tuple(ports), protocol, duration, prefix)


def check_target(
    policies: list[Policy], vm: str, ports: list[int], duration: timedelta
) -> tuple[Policy, str, str]:
    """Check the VM, ports and duration of a request (not yet its source); return the
    policy, the VM's name as the policy spells it and the rules' protocol."""
    policy = find_policy(policies, vm)
    vm_name = policy.match(vm) or vm

    rules = []
    for port in ports:
        rule = policy.port_rule(port)
        if rule is None:
            raise PortNotAllowed(port, vm_name, [r.port for r in policy.ports])
        rules.append(rule)
    protocols = {rule.protocol for rule in rules}
    protocol = protocols.pop() if len(protocols) == 1 else "*"

    longest = min(rule.max_duration for rule in rules)
    if duration < policy.min_duration or duration > longest:
        raise DurationOutOfBounds(
            format_duration(duration),
            format_duration(policy.min_duration),
            format_duration(longest),
        )
    return policy, vm_name, protocol


def check_source(policy: Policy, source: str, vm_name: str) -> str:
    """The canonical prefix of ``source`` if ``policy`` allows it as a source for
    ``vm_name`` (named in the refusal when Defender for Cloud would refuse it)."""
    prefix = canonical_source(source)
    check_width(prefix, policy.widest_source_v4, policy.widest_source_v6)
    if not policy.allow_private_sources and is_private(prefix):
        raise InvalidSource(
            prefix, "this policy does not allow private or shared (CGNAT) addresses as sources"
        )
    if policy.allowed_sources and not _within(prefix, policy.allowed_sources):
        raise InvalidSource(
            prefix,
            "it is outside the sources this policy allows: " + ", ".join(policy.allowed_sources),
        )
    if policy.enforcement == "defender":
        check_defender_source(
            prefix,
            policy.allowed_sources,
            vm_name,
            policy.widest_source_v4,
            policy.widest_source_v6,
        )
    return prefix


def _within(prefix: str, allowed: list[str]) -> bool:
    network = ipaddress.ip_network(prefix)
    for entry in allowed:
        outer = ipaddress.ip_network(entry)
        if outer.version == network.version and network.subnet_of(outer):  # type: ignore[arg-type]
            return True
    return False
