"""The refusal texts of identity and RBAC checks: what is missing, where, and escaped."""

from __future__ import annotations

from bot import messages
from jitcore.rbac import AccessDecision

VM = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm-web01"
INITIATE = "Microsoft.Security/locations/jitNetworkAccessPolicies/initiate/action"


def decision(**overrides: object) -> AccessDecision:
    values: dict = {
        "allowed": False,
        "scope": VM,
        "held": ("Microsoft.Compute/virtualMachines/read",),
        "missing": (INITIATE,),
        "denied": (
            (INITIATE, "/subscriptions/s/providers/Microsoft.Authorization/denyAssignments/d1"),
        ),
        "granted_by": {"Microsoft.Compute/virtualMachines/read": [("Owner", "/subscriptions/s")]},
    }
    values.update(overrides)
    return AccessDecision(**values)


def test_an_access_refusal_lists_each_missing_action_the_scope_and_the_deny_that_blocks_it() -> (
    None
):
    text = messages.access_refused("request", "vm-web01", "oscar@example.com", decision())

    assert text.startswith(":no_entry: You cannot request access to *vm-web01*")
    assert f"lacks 1 action at `{VM}`" in text
    assert f"• `{INITIATE}` — blocked by deny assignment `d1`" in text
    assert "Owner at `/subscriptions/s`" in text
    assert "`/jit why vm-web01`" in text


def test_untrusted_text_in_refusals_is_escaped() -> None:
    refused = messages.access_refused("request", "<!channel>", "<@U1>@x", decision())
    unmapped = messages.identity_refused("U0X", "no_principal", "a<!here>@x", "email")

    for text in (refused, unmapped):
        assert "<!channel>" not in text and "<!here>" not in text and "<@U1>" not in text
    assert "&lt;!here&gt;" in unmapped


def test_only_refusals_a_mapping_can_fix_tell_the_user_to_get_mapped() -> None:
    no_email = messages.identity_refused("U0X", "no_email", "", "email")
    guest = messages.identity_refused("U0X", "guest", "", "")
    for_admin = messages.identity_refused("U0X", "no_principal", "x@y.z", "admin", hint=False)

    assert "/jit admin map <@U0X>" in no_email
    assert "/jit admin map" not in guest and "/jit admin map" not in for_admin
