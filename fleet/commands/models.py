"""Commands to boxes: database rows with a state machine (see ``fleet.commands.transitions``).

The database is the truth; the channel layer only rings the box's session so it fetches what is
pending. A command is delivered at once when the box is connected and at its next hello otherwise,
and expires at ``expires_at`` if the box never finishes it.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from functools import cached_property
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Q

from fleet.commands.choices import (
    FINISHED_STATES,
    OPEN_STATES,
    BackupSource,
    CommandKind,
    CommandState,
    RemoteAccessState,
)
from fleet.core.errors import Conflict
from fleet.core.secrets import SecretDecryptionError, secret_decrypt_bytes, secret_encrypt_bytes

logger = logging.getLogger(__name__)


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


class Backup(models.Model):
    """A configuration backup of one box: a set of files (``BackupFile``) with their modes and owners.

    ``command`` is the ``backup`` command that asked for it (null once that command is gone).
    ``file_count`` and ``size_bytes`` are kept by the service that adds files, under a lock of this row,
    and stay within the ``BACKUP_MAX_FILES`` / ``BACKUP_MAX_BYTES`` settings. A stock OverTheBox box
    uploads one file per request while the backup is open (``BACKUP_UPLOAD_WINDOW_S`` after
    ``created_at``); ``otb-agent`` uploads all files in one request. Only the newest
    ``BACKUP_KEEP_PER_BOX`` backups of a box are kept."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    box = models.ForeignKey("fleet.Box", on_delete=models.CASCADE, related_name="backups")
    command = models.ForeignKey(
        Command, null=True, blank=True, on_delete=models.SET_NULL, related_name="backups"
    )
    source = models.CharField(max_length=8, choices=BackupSource.choices)
    created_at = models.DateTimeField(auto_now_add=True)
    file_count = models.PositiveIntegerField(default=0)
    size_bytes = models.PositiveBigIntegerField(default=0)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["box", "-created_at"], name="backup_box_created_idx")]

    def __str__(self) -> str:
        return f"backup {self.id} of {self.box_id}"


class BackupFile(models.Model):
    """One file of a backup, as the box had it: an absolute path (unique in its backup), permission
    bits, owner, and either text ``content`` or, for a symlink, its target in ``symlink``.

    The text is stored only encrypted (``/etc/config`` holds tunnel passwords and keys):
    ``content_ciphertext`` is the raw Fernet token of its UTF-8 bytes under the first key of
    ``OTB_SECRETS_KEYS`` (``fleet.core.secrets``), ``content`` decrypts it on first read. ``sha256``
    and ``size_bytes`` are of the plaintext, so comparing two files needs no key."""

    backup = models.ForeignKey(Backup, on_delete=models.CASCADE, related_name="files")
    filename = models.CharField(max_length=1024)
    mode = models.PositiveIntegerField()
    uid = models.PositiveIntegerField(default=0)
    gid = models.PositiveIntegerField(default=0)
    is_symlink = models.BooleanField(default=False)
    symlink = models.CharField(max_length=1024, blank=True, default="")
    content_ciphertext = models.BinaryField()
    sha256 = models.CharField(max_length=64, help_text="SHA-256 (hex) of the content's UTF-8 bytes")
    size_bytes = models.PositiveIntegerField(default=0)

    encrypted_fields = ("content_ciphertext",)

    class Meta:
        ordering = ["filename"]
        constraints = [
            models.UniqueConstraint(fields=["backup", "filename"], name="backupfile_unique_name"),
            models.CheckConstraint(condition=Q(mode__lte=0o7777), name="backupfile_mode_bits"),
        ]

    def __str__(self) -> str:
        return self.filename

    @classmethod
    def sealed(cls, *, content: str, **fields: Any) -> BackupFile:
        """An unsaved file holding ``content`` encrypted, with its checksum."""
        data = content.encode("utf-8")
        file = cls(
            content_ciphertext=secret_encrypt_bytes(data), sha256=hashlib.sha256(data).hexdigest(), **fields
        )
        file.__dict__["content"] = content
        return file

    @cached_property
    def content(self) -> str:
        """The file's text, decrypted; Conflict (409, code ``backup_unreadable``) when no configured
        key opens it (the key it was encrypted with has left ``OTB_SECRETS_KEYS``)."""
        try:
            return secret_decrypt_bytes(bytes(self.content_ciphertext)).decode("utf-8")
        except SecretDecryptionError as exc:
            logger.error(
                "backup file cannot be decrypted",
                extra={"backup_id": str(self.backup_id), "backup_file_id": self.pk},
            )
            raise Conflict(
                f"{self.filename} of this backup cannot be decrypted with the configured keys "
                "(OTB_SECRETS_KEYS): the key it was encrypted with has been removed",
                field="backup_id",
                code="backup_unreadable",
            ) from exc


class RemoteAccess(models.Model):
    """A time-limited reverse SSH session from a stock OverTheBox box to our bastion, asked for by an
    admin (or staff) and approved by an owner of the box's organisation.

    Once approved it is open until ``expires_at`` (``duration_s`` after the approval) unless closed
    earlier; ``bastion_port`` is the bastion's SSH port for this session, unique among open sessions
    (a database constraint). ``device_public_key`` is the box's host key, which it sends when asked."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    box = models.ForeignKey("fleet.Box", on_delete=models.CASCADE, related_name="remote_accesses")
    state = models.CharField(
        max_length=16, choices=RemoteAccessState.choices, default=RemoteAccessState.REQUESTED
    )
    exposed_port = models.PositiveIntegerField(help_text="the box's port the session reaches (22: SSH)")
    public_key = models.CharField(max_length=1024, help_text="the SSH key allowed in on the box")
    duration_s = models.PositiveIntegerField()
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    requested_at = models.DateTimeField(auto_now_add=True)
    approved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    approved_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    bastion_port = models.PositiveIntegerField(null=True, blank=True)
    device_public_key = models.CharField(max_length=1024, blank=True, default="")
    connected_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-requested_at"]
        indexes = [models.Index(fields=["state", "expires_at"], name="remoteaccess_state_exp_idx")]
        constraints = [
            models.UniqueConstraint(
                fields=["bastion_port"],
                condition=Q(state__in=["approved", "connected"]),
                name="remoteaccess_open_port_unique",
            ),
            models.CheckConstraint(
                condition=Q(exposed_port__gte=1) & Q(exposed_port__lte=65535), name="remoteaccess_port_range"
            ),
        ]

    def __str__(self) -> str:
        return f"remote access {self.id} to {self.box_id} ({self.state})"

    @property
    def is_open(self) -> bool:
        return self.state in (RemoteAccessState.APPROVED, RemoteAccessState.CONNECTED)
