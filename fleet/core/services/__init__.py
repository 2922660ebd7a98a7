"""Every write of the fleet app: organisations and people (``organizations``), tokens (``tokens``),
box inventory, enrollment and configuration state (``boxes``).

Each public function is named ``<entity>_<action>``, takes keyword-only typed arguments, runs in
one transaction, records an audit entry for the change, and raises ``fleet.core.errors`` on refusal.
"""

from fleet.core.services.boxes import (
    ImportReport,
    ImportRowError,
    box_config_applied,
    box_enroll,
    box_set_wan_policy,
    box_update,
    boxes_import,
    wan_policy_validate,
)
from fleet.core.services.organizations import (
    invitation_accept,
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
    "ImportReport",
    "ImportRowError",
    "api_token_create",
    "api_token_revoke",
    "box_config_applied",
    "box_enroll",
    "box_set_wan_policy",
    "box_update",
    "boxes_import",
    "enrollment_token_create",
    "enrollment_token_revoke",
    "invitation_accept",
    "member_invite",
    "member_remove",
    "member_set_role",
    "organization_create",
    "organization_update",
    "wan_policy_validate",
]
