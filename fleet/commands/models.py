"""Commands to boxes: database rows with a state machine (see ``fleet.commands.transitions``).

The database is the truth; the channel layer only rings the box's session so it fetches what is
pending. A command is delivered at once when the box is connected and at its next hello otherwise,
and expires at ``expires_at`` if the box never finishes it.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q

from fleet.commands.choices import FINISHED_STATES, OPEN_STATES, CommandKind, CommandState


class Command(models.Model):
    """One command for one box. ``organization`` is the box's organisation when it was created
    (denormalised for scoping). ``delivery_count`` counts the frames sent to the agent; the agent
    runs a given id at most once, so redelivery after a reconnect is harmless."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    box = models.ForeignKey("fleet.Box", on_delete=models.CASCADE, related_name="commands")
    organization = models.ForeignKey("fleet.Organization", on_delete=models.CASCADE, related_name="commands")
    kind = models.CharField(max_length=32, choices=CommandKind.choices)
    params = models.JSONField(default=dict, blank=True)
    state = models.CharField(max_length=16, choices=CommandState.choices, default=CommandState.PENDING)
    progress = models.PositiveSmallIntegerField(default=0)
    progress_message = models.CharField(max_length=512, blank=True, default="")
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField()
    delivery_count = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["box", "state"], name="command_box_state_idx"),
            models.Index(fields=["box", "-created_at"], name="command_box_created_idx"),
            models.Index(
                fields=["expires_at"],
                condition=Q(state__in=["pending", "sent", "running"]),
                name="command_open_expiry_idx",
            ),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(progress__lte=100), name="command_progress_at_most_100"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.id} ({self.state})"

    @property
    def is_finished(self) -> bool:
        return self.state in FINISHED_STATES

    @property
    def is_open(self) -> bool:
        """Not finished yet: waiting for the box, sent to it, or running on it."""
        return self.state in OPEN_STATES

    @property
    def is_running(self) -> bool:
        return self.state == CommandState.RUNNING
