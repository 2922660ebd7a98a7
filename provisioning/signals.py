"""What provisioning tells the apps above it, which it may not import (the layers contract in
pyproject.toml): they connect receivers in their ``AppConfig.ready``.

A receiver runs inside the sending service's transaction, so what it writes commits or rolls back
with the change it hears about; it only calls one service of its own app (no logic in a receiver)
and returns a dict of what it did, which the sender merges into its audit entry.
"""

from __future__ import annotations

from django.dispatch import Signal

# ``box_revoke_credentials(include_agent=True)``: the box's own credentials are revoked, so every other
# identity the box proves itself with must stop too (a stock OverTheBox device's token and JWTs:
# ``otbcompat``). Arguments: ``box`` (locked), ``actor``.
box_device_credentials_revoked = Signal()
