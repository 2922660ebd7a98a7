"""The writes of the fleet core: organisations and people (``organizations``), personal API and
enrollment tokens (``tokens``). (What happens to a box is ``provisioning.services``.)

Each public function is named ``<entity>_<action>``, takes keyword-only typed arguments, runs in
one transaction, records an audit entry for the change, and raises ``fleet.core.errors`` on refusal.
"""

from fleet.core.services.organizations import (
    invitation_accept,
    invitation_resend,
    invitation_revoke,
    invitation_sign_up,
    member_invite,
    member_remove,
    member_set_role,
    organization_create,
    organization_update,
)
from fleet.core.services.tokens import (
    api_token_create,
    api_token_revoke,
    enrollment_token_create,
    enrollment_token_revoke,
)

__all__ = [
    "api_token_create",
    "api_token_revoke",
    "enrollment_token_create",
    "enrollment_token_revoke",
    "invitation_accept",
    "invitation_resend",
    "invitation_revoke",
    "invitation_sign_up",
    "member_invite",
    "member_remove",
    "member_set_role",
    "organization_create",
    "organization_update",
]
