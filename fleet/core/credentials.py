"""The live-agent-credential rule, said once: an agent token is live while its credential is not
revoked and its box is not decommissioned.

Three readers apply it: the API's bearer authentication (ORM, :func:`live_agent_credentials`), the
session gate's batched websocket connect and the config poll's 304 fast path (raw SQL on their own
async connections, :func:`live_agent_credential_sql`). Both forms are built from ``LIVE_WHILE_NULL``
below, so the rule cannot drift between them.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Model, Q, QuerySet

from fleet.core.models import AgentCredential, Box

# (model, field, path from an AgentCredential): the credential is live while each of these is NULL.
LIVE_WHILE_NULL: tuple[tuple[type[Model], str, str], ...] = (
    (AgentCredential, "revoked_at", "revoked_at"),
    (Box, "decommissioned_at", "box__decommissioned_at"),
)

LIVE_AGENT_CREDENTIAL = Q(**{f"{path}__isnull": True for _, _, path in LIVE_WHILE_NULL})


def live_agent_credentials() -> QuerySet[AgentCredential]:
    """The live agent credentials (filter further by ``token_hash``)."""
    return AgentCredential.objects.filter(LIVE_AGENT_CREDENTIAL)


def live_agent_credential_sql(*, credential: str = "c", box: str = "b") -> str:
    """The rule as a SQL condition over an agent credential aliased ``credential`` joined to its box
    aliased ``box`` (``fleet_agentcredential c JOIN fleet_box b ON b.id = c.box_id``)."""
    aliases: dict[type[Model], str] = {AgentCredential: credential, Box: box}
    conditions = []
    for model, name, _ in LIVE_WHILE_NULL:
        field: Any = model._meta.get_field(name)
        conditions.append(f"{aliases[model]}.{field.column} IS NULL")
    return " AND ".join(conditions)


def agent_credential_join(*, credential: str = "c", box: str = "b") -> str:
    """``fleet_agentcredential c JOIN fleet_box b ON b.id = c.box_id``: the tables the rule reads."""
    box_key = Box._meta.get_field("id").column
    credential_box = AgentCredential._meta.get_field("box").column
    return (
        f"{AgentCredential._meta.db_table} {credential} JOIN {Box._meta.db_table} {box}"
        f" ON {box}.{box_key} = {credential}.{credential_box}"
    )
