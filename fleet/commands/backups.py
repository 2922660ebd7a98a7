"""Configuration backups of boxes: writes, reads, the diff and the tar.gz, shared by the person API,
the portal, the agent API and the stock OverTheBox ``/1.0`` routes.

A backup is made by a ``backup`` command (the box uploads its files), listed and compared by people,
and restored by a ``restore`` command whose ``params.backup_id`` names it (the box fetches it back).
Bounds (settings ``OTB``): ``BACKUP_MAX_FILES`` files and ``BACKUP_MAX_BYTES`` bytes per backup,
``BACKUP_MAX_FILE_BYTES`` per file, the newest ``BACKUP_KEEP_PER_BOX`` backups per box kept (pruned
when a new one is made), a stock box's uploads accepted ``BACKUP_UPLOAD_WINDOW_S`` after the start.

File contents are stored encrypted (``BackupFile.content_ciphertext``, key ``OTB_SECRETS_KEYS``) and
decrypted on read; sizes and SHA-256 checksums are of the plaintext. Retention never prunes a backup
that an open ``restore`` command names while the box may still fetch it.
"""

from __future__ import annotations

import difflib
import io
import logging
import posixpath
import tarfile
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast
from uuid import UUID

from django.conf import settings
from django.core import signing
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from fleet.commands.choices import OPEN_STATES, BackupSource, CommandKind
from fleet.commands.models import Backup, BackupFile, Command
from fleet.commands.services import command_create
from fleet.core.access import authorize
from fleet.core.audit import Actor, audit_record
from fleet.core.choices import Role
from fleet.core.errors import InvalidInput, NotFound
from fleet.core.models import Box

logger = logging.getLogger(__name__)

PATH_MAX = 1024
ID_MAX = 2**31 - 1
ARCHIVE_SALT = "fleet.commands.backups.archive"


def backup_setting(name: str) -> int:
    """One integer ``BACKUP_*`` setting of ``settings.OTB``."""
    return int(cast(dict[str, Any], settings.OTB)[name])


# --- validation ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileInput:
    """One file as a box sent it, checked."""

    filename: str
    mode: int
    uid: int
    gid: int
    is_symlink: bool
    symlink: str
    content: str

    @property
    def size_bytes(self) -> int:
        return len(self.content.encode("utf-8")) + len(self.symlink.encode("utf-8"))


def _encodable(value: str) -> bool:
    """False for text PostgreSQL cannot store: a lone UTF-16 surrogate (``"\\ud800"`` in JSON)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _path_clean(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidInput("an absolute path is required", field=field)
    if not _encodable(value):
        raise InvalidInput("not valid Unicode text", field=field)
    if len(value) > PATH_MAX or "\x00" in value or not value.isprintable():
        raise InvalidInput(f"at most {PATH_MAX} printable characters", field=field)
    if not value.startswith("/") or posixpath.normpath(value) != value or value == "/":
        raise InvalidInput(
            "an absolute, normalised path of a file (no '..', '//' or trailing '/')", field=field
        )
    return value


def _id_clean(value: Any, field: str) -> int:
    if type(value) is not int or not 0 <= value <= ID_MAX:
        raise InvalidInput(f"an integer from 0 to {ID_MAX}", field=field)
    return value


def backup_file_clean(raw: Any, *, prefix: str = "") -> FileInput:
    """Check one file of an upload: ``{"filename", "mode", "uid", "gid", "is_symlink", "symlink",
    "content"}`` as the box's backup script writes it (``mode`` is the octal text of ``stat -c %a``).
    Raises InvalidInput naming ``<prefix><field>``."""
    if not isinstance(raw, dict):
        raise InvalidInput("a file object is required", field=prefix.rstrip(".") or "body")
    filename = _path_clean(raw.get("filename"), f"{prefix}filename")
    mode_text = raw.get("mode")
    if (
        not isinstance(mode_text, str)
        or not 1 <= len(mode_text) <= 4
        or any(c not in "01234567" for c in mode_text)
    ):
        raise InvalidInput('the octal permission bits as text, such as "644"', field=f"{prefix}mode")
    uid = _id_clean(raw.get("uid", 0), f"{prefix}uid")
    gid = _id_clean(raw.get("gid", 0), f"{prefix}gid")
    is_symlink = raw.get("is_symlink", False)
    if not isinstance(is_symlink, bool):
        raise InvalidInput("true or false", field=f"{prefix}is_symlink")
    symlink = raw.get("symlink") or ""
    content = raw.get("content")
    if content is None:
        content = ""
    if (
        not isinstance(symlink, str)
        or len(symlink) > PATH_MAX
        or "\x00" in symlink
        or not _encodable(symlink)
    ):
        raise InvalidInput(f"the link's target, at most {PATH_MAX} characters", field=f"{prefix}symlink")
    if is_symlink and not symlink:
        raise InvalidInput("a symlink needs its target", field=f"{prefix}symlink")
    if not isinstance(content, str):
        raise InvalidInput("the file's text", field=f"{prefix}content")
    if "\x00" in content:
        raise InvalidInput("text files only: the content holds a NUL character", field=f"{prefix}content")
    if not _encodable(content):
        raise InvalidInput("text files only: the content is not valid Unicode", field=f"{prefix}content")
    if is_symlink:
        content = ""
    limit = backup_setting("BACKUP_MAX_FILE_BYTES")
    if len(content.encode("utf-8")) > limit:
        raise InvalidInput(f"larger than {limit} bytes", field=f"{prefix}content")
    return FileInput(
        filename=filename,
        mode=int(mode_text, 8),
        uid=uid,
        gid=gid,
        is_symlink=is_symlink,
        symlink=symlink if is_symlink else "",
        content=content,
    )


def _backup_command(box: Box, command_id: Any, field: str) -> Command | None:
    """The ``backup`` command of ``box`` that ``command_id`` names (None when none was given)."""
    if command_id is None:
        return None
    if isinstance(command_id, int) and not isinstance(command_id, bool):
        command_id = str(command_id)
    if not isinstance(command_id, str) or len(command_id) > 64:
        raise InvalidInput("the id of the backup action", field=field)
    try:
        parsed = UUID(command_id)
    except ValueError as exc:
        raise InvalidInput("not a backup action of this box", field=field) from exc
    command = Command.objects.filter(pk=parsed, box=box, kind=CommandKind.BACKUP).first()
    if command is None:
        raise InvalidInput("not a backup action of this box", field=field)
    return command


# --- writes -------------------------------------------------------------------------------------


def _sealed(backup: Backup, item: FileInput) -> BackupFile:
    fields = {name: value for name, value in item.__dict__.items() if name != "content"}
    return BackupFile.sealed(backup=backup, size_bytes=item.size_bytes, content=item.content, **fields)


def _restoring(box_id: UUID) -> set[str]:
    """Ids (text) of the box's backups that an open ``restore`` command names: the box may still fetch
    them. Read under the box row lock, which ``command_create`` also takes for a ``restore``, so a
    restore being queued right now is either seen here or finds its backup gone."""
    params = Command.objects.filter(
        box_id=box_id, kind=CommandKind.RESTORE, state__in=OPEN_STATES
    ).values_list("params", flat=True)
    return {str(value.get("backup_id")) for value in params if isinstance(value, dict)}


def _box_lock(box_id: UUID) -> None:
    # The box row lock serialises the backups of one box, their pruning and the restores queued.
    Box.objects.select_for_update().filter(pk=box_id).values_list("pk", flat=True).first()


def backups_prune(*, box_id: UUID) -> int:
    """Delete the backups of a box beyond the newest ``BACKUP_KEEP_PER_BOX``, except those an open
    ``restore`` command names (kept over the count until it finishes); returns how many were deleted.
    Call it inside a transaction holding the box row lock."""
    keep = max(1, backup_setting("BACKUP_KEEP_PER_BOX"))
    restoring = _restoring(box_id)
    stale = [
        pk
        for pk in Backup.objects.filter(box_id=box_id)
        .order_by("-created_at", "-id")
        .values_list("pk", flat=True)[keep:]
        if str(pk) not in restoring
    ]
    if stale:
        Backup.objects.filter(pk__in=stale).delete()
        logger.info("backups pruned", extra={"box_id": str(box_id), "deleted": len(stale)})
    return len(stale)


def _backup_start(box: Box, command: Command | None, source: str) -> Backup:
    _box_lock(box.pk)
    backup = Backup.objects.create(box=box, command=command, source=source)
    backups_prune(box_id=box.pk)
    return backup


def _bounds_check(*, files: int, size: int) -> None:
    max_files = backup_setting("BACKUP_MAX_FILES")
    max_bytes = backup_setting("BACKUP_MAX_BYTES")
    if files > max_files:
        raise InvalidInput(f"a backup holds at most {max_files} files", field="filename")
    if size > max_bytes:
        raise InvalidInput(f"a backup holds at most {max_bytes} bytes", field="content")


def backup_start(*, box: Box, device_action_id: Any) -> Backup:
    """A stock OverTheBox box starts a backup (``POST …/backups``); its files follow one per call
    (``backup_file_put``). ``device_action_id`` must name a ``backup`` command of the box."""
    if device_action_id is None:
        raise InvalidInput("the id of the backup action is required", field="device_action_id")
    with transaction.atomic():
        command = _backup_command(box, device_action_id, "device_action_id")
        return _backup_start(box, command, BackupSource.OTB)


def backup_file_put(*, box: Box, backup_id: Any, raw: Any) -> BackupFile:
    """Add one file to an open backup of ``box`` (a second upload of a path replaces it). NotFound
    for another box's backup; InvalidInput naming the field for a bad file, a closed backup or a
    backup over its bounds (then nothing is written)."""
    clean = backup_file_clean(raw)
    window = timedelta(seconds=backup_setting("BACKUP_UPLOAD_WINDOW_S"))
    with transaction.atomic():
        backup = _backup_of_box(box.pk, backup_id, lock=True)
        if backup.source != BackupSource.OTB or timezone.now() - backup.created_at > window:
            raise InvalidInput("this backup is closed: start a new one", field="backup_id")
        previous = BackupFile.objects.filter(backup=backup, filename=clean.filename).first()
        files = backup.file_count + (0 if previous else 1)
        size = backup.size_bytes - (previous.size_bytes if previous else 0) + clean.size_bytes
        _bounds_check(files=files, size=size)
        if previous is not None:
            previous.delete()
        stored = _sealed(backup, clean)
        stored.save(force_insert=True)
        backup.file_count, backup.size_bytes = files, size
        backup.save(update_fields=["file_count", "size_bytes"])
    return stored


def backup_create_with_files(*, box: Box, command_id: Any, files: Any) -> Backup:
    """``otb-agent`` uploads a whole backup in one request: every file is checked before anything is
    written (errors name ``files[i].<field>``). ``command_id`` must name a ``backup`` command of the box."""
    if not isinstance(files, list):
        raise InvalidInput("a list of files is required", field="files")
    cleaned = [backup_file_clean(raw, prefix=f"files[{index}].") for index, raw in enumerate(files)]
    seen: set[str] = set()
    for index, item in enumerate(cleaned):
        if item.filename in seen:
            raise InvalidInput("this path is listed twice", field=f"files[{index}].filename")
        seen.add(item.filename)
    size = sum(item.size_bytes for item in cleaned)
    _bounds_check(files=len(cleaned), size=size)
    with transaction.atomic():
        command = _backup_command(box, command_id, "command_id")
        backup = _backup_start(box, command, BackupSource.AGENT)
        BackupFile.objects.bulk_create([_sealed(backup, item) for item in cleaned])
        backup.file_count, backup.size_bytes = len(cleaned), size
        backup.save(update_fields=["file_count", "size_bytes"])
    return backup


def backup_delete(*, actor: Actor, backup: Backup) -> None:
    """Delete a backup (admin of the box's organisation, or staff); audited. A person may delete one
    that an open ``restore`` names (only retention spares those): the box's fetch then fails."""
    box = backup.box
    authorize(actor, organization_id=box.organization_id, minimum=Role.ADMIN)
    with transaction.atomic():
        audit_record(
            actor=actor,
            action="backup.delete",
            box=box,
            target=backup,
            before={"created_at": backup.created_at.isoformat(), "files": backup.file_count},
        )
        backup.delete()


def backup_restore(*, actor: Actor, backup: Backup) -> Command:
    """Queue a ``restore`` command of ``backup`` for its box (admin, or staff): the box fetches the
    files and writes them back. Same checks and audit as every command (``command_create``: the
    backup must still exist and every file decrypt, checked under the box row lock that pruning takes)."""
    return command_create(
        actor=actor, box=backup.box, kind=CommandKind.RESTORE, params={"backup_id": str(backup.pk)}
    )


# --- reads --------------------------------------------------------------------------------------


def backup_list_for_box(*, box_id: UUID) -> QuerySet[Backup]:
    """A box's backups, newest first."""
    return Backup.objects.filter(box_id=box_id).order_by("-created_at", "-id")


def _backup_of_box(box_id: UUID, backup_id: Any, *, lock: bool = False) -> Backup:
    try:
        parsed = UUID(str(backup_id))
    except ValueError as exc:
        raise NotFound("backup not found", field="backup_id") from exc
    queryset = Backup.objects.select_related("box")
    if lock:
        queryset = queryset.select_for_update(of=("self",))
    backup = queryset.filter(pk=parsed, box_id=box_id).first()
    if backup is None:
        raise NotFound("backup not found", field="backup_id")
    return backup


def backup_get_for_box(*, box_id: UUID, backup_id: Any) -> Backup:
    """A backup of that box; NotFound for another box's backup (whoever owns it)."""
    return _backup_of_box(box_id, backup_id)


def backup_files(*, backup: Backup, contents: bool = True) -> list[BackupFile]:
    """The backup's files, by path; ``contents=False`` leaves the ciphertexts in the database (a
    listing of paths, modes and checksums then reads no file's content)."""
    queryset = BackupFile.objects.filter(backup=backup).order_by("filename")
    if not contents:
        queryset = queryset.defer("content_ciphertext")
    return list(queryset)


def backup_file_get(*, backup: Backup, filename: str) -> BackupFile:
    file = BackupFile.objects.filter(backup=backup, filename=filename).first()
    if file is None:
        raise NotFound("no such file in this backup", field="filename")
    return file


def _meta(file: BackupFile) -> str:
    return f"mode {file.mode:o}, owner {file.uid}:{file.gid}" + (
        f", symlink to {file.symlink}" if file.is_symlink else ""
    )


def backup_diff(*, old: Backup, new: Backup) -> list[dict[str, Any]]:
    """Per path of either backup: ``status`` (added, removed, changed, unchanged), ``diff`` (a unified
    diff of the contents, ``a/<path>`` old and ``b/<path>`` new, empty when equal) and ``meta``
    (mode/owner/symlink changes, old -> new, when they differ)."""
    before = {file.filename: file for file in backup_files(backup=old)}
    after = {file.filename: file for file in backup_files(backup=new)}
    result = []
    for filename in sorted(before.keys() | after.keys()):
        a, b = before.get(filename), after.get(filename)
        diff = ""
        if not (a and b and a.sha256 == b.sha256):  # same checksum: same text, nothing to decrypt
            diff = "".join(
                difflib.unified_diff(
                    (a.content if a else "").splitlines(keepends=True),
                    (b.content if b else "").splitlines(keepends=True),
                    fromfile=f"a{filename}" if a else "/dev/null",
                    tofile=f"b{filename}" if b else "/dev/null",
                )
            )
        meta = ""
        if a and b and _meta(a) != _meta(b):
            meta = f"{_meta(a)} -> {_meta(b)}"
        if a is None:
            status = "added"
        elif b is None:
            status = "removed"
        elif diff or meta:
            status = "changed"
        else:
            status = "unchanged"
        result.append({"filename": filename, "status": status, "diff": diff, "meta": meta})
    return result


def backup_archive(*, backup: Backup) -> bytes:
    """The backup as a gzipped tar in the layout ``sysupgrade --restore-backup`` extracts from ``/``:
    paths without their leading ``/``, each file's mode, owner and symlink kept, dated at the backup."""
    buffer = io.BytesIO()
    mtime = backup.created_at.timestamp()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.GNU_FORMAT) as archive:
        for file in backup_files(backup=backup):
            info = tarfile.TarInfo(name=file.filename.lstrip("/"))
            info.mode, info.uid, info.gid, info.mtime = file.mode, file.uid, file.gid, mtime
            if file.is_symlink:
                info.type, info.linkname = tarfile.SYMTYPE, file.symlink
                archive.addfile(info)
            else:
                data = file.content.encode("utf-8")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def backup_archive_token(*, backup: Backup) -> str:
    """An unguessable token naming ``backup`` (HMAC-signed with SECRET_KEY, dated): the stock box
    downloads its archive with plain curl, without credentials, by ``backup_from_archive_token``."""
    return signing.TimestampSigner(salt=ARCHIVE_SALT, sep=".").sign(uuid.UUID(str(backup.pk)).hex)


def backup_from_archive_token(token: str) -> Backup:
    """The backup a token names, while it is younger than ``BACKUP_URL_TTL_S``; NotFound otherwise
    (forged, expired, or the backup is gone)."""
    try:
        value = signing.TimestampSigner(salt=ARCHIVE_SALT, sep=".").unsign(
            token, max_age=backup_setting("BACKUP_URL_TTL_S")
        )
        backup_id = UUID(hex=value)
    except (signing.BadSignature, ValueError) as exc:
        raise NotFound("this download link is invalid or has expired") from exc
    backup = Backup.objects.filter(pk=backup_id).first()
    if backup is None:
        raise NotFound("this download link is invalid or has expired")
    return backup
