"""REST edge for configuration backups: people list, read, compare, download, restore and delete a
box's backups; ``otb-agent`` uploads a backup and fetches one back to restore it. A backup is made by
the ``backup`` command (``POST /boxes/{id}/commands/``)."""

from __future__ import annotations

from typing import Any, cast

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from fleet.commands.apis import CommandOutputSerializer
from fleet.commands.backups import (
    backup_archive,
    backup_create_with_files,
    backup_delete,
    backup_diff,
    backup_file_get,
    backup_files,
    backup_get_for_box,
    backup_list_for_box,
    backup_restore,
)
from fleet.commands.models import Backup, BackupFile
from fleet.core.access import box_for
from fleet.core.apis.base import ApiView
from fleet.core.authentication import AgentPrincipal, BearerTokenAuthentication
from fleet.core.choices import Role
from fleet.core.errors import InvalidInput
from fleet.core.permissions import IsAgent, IsPerson
from fleet.core.serializers import StrictSerializer


class BackupOutputSerializer(serializers.ModelSerializer):
    box = serializers.UUIDField(source="box_id")
    command = serializers.UUIDField(source="command_id", allow_null=True)

    class Meta:
        model = Backup
        fields = ["id", "box", "command", "source", "created_at", "file_count", "size_bytes"]


class BackupFileMetaSerializer(serializers.ModelSerializer):
    mode = serializers.SerializerMethodField()

    class Meta:
        model = BackupFile
        fields = ["filename", "mode", "uid", "gid", "is_symlink", "symlink", "size_bytes", "sha256"]

    def get_mode(self, file: BackupFile) -> str:
        """The permission bits in octal, as the box sent them (``"644"``)."""
        return f"{file.mode:o}"


class BackupFileSerializer(BackupFileMetaSerializer):
    content = serializers.CharField(help_text="the file's text (stored encrypted, decrypted here)")

    class Meta(BackupFileMetaSerializer.Meta):
        fields = [*BackupFileMetaSerializer.Meta.fields, "content"]


class BackupDetailSerializer(BackupOutputSerializer):
    files = serializers.SerializerMethodField()

    class Meta(BackupOutputSerializer.Meta):
        fields = [*BackupOutputSerializer.Meta.fields, "files"]

    @extend_schema_field(BackupFileMetaSerializer(many=True))
    def get_files(self, backup: Backup) -> list[dict[str, Any]]:
        return cast(
            list[dict[str, Any]],
            BackupFileMetaSerializer(backup_files(backup=backup, contents=False), many=True).data,
        )


class BoxBackupListApi(ApiView):
    """A box's backups, newest first (viewer and up). Make one with the ``backup`` command."""

    permission_classes = [IsPerson]

    @extend_schema(responses={200: BackupOutputSerializer(many=True)})
    def get(self, request: Request, box_id: Any) -> Response:
        box = box_for(request.user, box_id, Role.VIEWER, request.auth)
        return self.paginated(request, backup_list_for_box(box_id=box.pk), BackupOutputSerializer)


class BoxBackupDetailApi(ApiView):
    """One backup with its files' paths, modes and owners (GET, viewer and up); DELETE removes it
    (admin and up, audited)."""

    permission_classes = [IsPerson]

    @extend_schema(responses=BackupDetailSerializer)
    def get(self, request: Request, box_id: Any, backup_id: Any) -> Response:
        box = box_for(request.user, box_id, Role.VIEWER, request.auth)
        backup = backup_get_for_box(box_id=box.pk, backup_id=backup_id)
        return Response(BackupDetailSerializer(backup).data)

    @extend_schema(request=None, responses={204: None})
    def delete(self, request: Request, box_id: Any, backup_id: Any) -> Response:
        box = box_for(request.user, box_id, Role.VIEWER, request.auth)
        backup_delete(
            actor=self.actor(request), backup=backup_get_for_box(box_id=box.pk, backup_id=backup_id)
        )
        return Response(status=204)


class BoxBackupFileApi(ApiView):
    """One file of a backup with its text (viewer and up)."""

    permission_classes = [IsPerson]

    class FilterSerializer(serializers.Serializer):
        path = serializers.CharField(max_length=1024, help_text="the file's absolute path")

    @extend_schema(parameters=[FilterSerializer], responses=BackupFileSerializer)
    def get(self, request: Request, box_id: Any, backup_id: Any) -> Response:
        box = box_for(request.user, box_id, Role.VIEWER, request.auth)
        backup = backup_get_for_box(box_id=box.pk, backup_id=backup_id)
        query = self.FilterSerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        file = backup_file_get(backup=backup, filename=query.validated_data["path"])
        return Response(BackupFileSerializer(file).data)


class BoxBackupDiffApi(ApiView):
    """Compare two backups of a box file by file: a unified diff of each file's text from ``old`` to
    ``new``, and its mode/owner changes (viewer and up)."""

    permission_classes = [IsPerson]

    class FilterSerializer(serializers.Serializer):
        old = serializers.UUIDField(help_text="the earlier backup")
        new = serializers.UUIDField(help_text="the later backup")

    class FileDiffSerializer(serializers.Serializer):
        filename = serializers.CharField()
        status = serializers.ChoiceField(choices=["added", "removed", "changed", "unchanged"])
        diff = serializers.CharField(help_text="unified diff, a/<path> old and b/<path> new; empty if equal")
        meta = serializers.CharField(help_text="mode/owner/symlink change, old -> new; empty if equal")

    class OutputSerializer(serializers.Serializer):
        old = BackupOutputSerializer()
        new = BackupOutputSerializer()
        files = serializers.ListField(child=serializers.DictField())

    @extend_schema(parameters=[FilterSerializer], responses=OutputSerializer)
    def get(self, request: Request, box_id: Any) -> Response:
        box = box_for(request.user, box_id, Role.VIEWER, request.auth)
        query = self.FilterSerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        old = backup_get_for_box(box_id=box.pk, backup_id=query.validated_data["old"])
        new = backup_get_for_box(box_id=box.pk, backup_id=query.validated_data["new"])
        files = self.FileDiffSerializer(backup_diff(old=old, new=new), many=True).data
        return Response(
            {"old": BackupOutputSerializer(old).data, "new": BackupOutputSerializer(new).data, "files": files}
        )


class BoxBackupArchiveApi(ApiView):
    """The backup as a tar.gz (paths relative to ``/``, modes and owners kept): what
    ``sysupgrade --restore-backup`` reads (viewer and up)."""

    permission_classes = [IsPerson]

    @extend_schema(responses={(200, "application/gzip"): OpenApiTypes.BINARY})
    def get(self, request: Request, box_id: Any, backup_id: Any) -> HttpResponse:
        box = box_for(request.user, box_id, Role.VIEWER, request.auth)
        backup = backup_get_for_box(box_id=box.pk, backup_id=backup_id)
        return backup_archive_response(backup)


def backup_archive_response(backup: Backup) -> HttpResponse:
    """The HTTP answer carrying a backup's tar.gz (also used by the ``/1.0`` download link)."""
    response = HttpResponse(backup_archive(backup=backup), content_type="application/gzip")
    stamp = backup.created_at.strftime("%Y%m%d-%H%M%S")
    response["Content-Disposition"] = f'attachment; filename="backup-{backup.box.serial}-{stamp}.tar.gz"'
    response["Cache-Control"] = "no-store"
    return response


class BoxBackupRestoreApi(ApiView):
    """Queue a ``restore`` command of this backup (admin and up): the box fetches the files and writes
    them back. Answers the command (201)."""

    permission_classes = [IsPerson]

    @extend_schema(request=None, responses={201: CommandOutputSerializer})
    def post(self, request: Request, box_id: Any, backup_id: Any) -> Response:
        box = box_for(request.user, box_id, Role.VIEWER, request.auth)
        backup = backup_get_for_box(box_id=box.pk, backup_id=backup_id)
        command = backup_restore(actor=self.actor(request), backup=backup)
        return Response(CommandOutputSerializer(command).data, status=201)


class AgentBackupListApi(ApiView):
    """``otb-agent`` uploads the backup a ``backup`` command asked for, all files in one request
    (nothing is stored unless every file is valid)."""

    authentication_classes = [BearerTokenAuthentication]
    permission_classes = [IsAgent]

    class FileSerializer(serializers.Serializer):
        filename = serializers.CharField(help_text="absolute path")
        mode = serializers.CharField(help_text='octal permission bits, "644"')
        uid = serializers.IntegerField()
        gid = serializers.IntegerField()
        is_symlink = serializers.BooleanField()
        symlink = serializers.CharField(allow_blank=True)
        content = serializers.CharField(allow_blank=True)

    class InputSerializer(StrictSerializer):
        command_id = serializers.UUIDField(help_text="the backup command")
        files = serializers.ListField(child=serializers.DictField())

    @extend_schema(request=InputSerializer, responses={201: BackupOutputSerializer})
    def post(self, request: Request) -> Response:
        box = cast(AgentPrincipal, request.user).box
        body = request.data
        if not isinstance(body, dict):
            raise InvalidInput("a JSON object with command_id and files is required", field="body")
        if body.get("command_id") is None:
            raise InvalidInput("the backup command's id is required", field="command_id")
        self.InputSerializer(data=body).is_valid(raise_exception=True)  # no unknown key, no wrong type
        backup = backup_create_with_files(box=box, command_id=body.get("command_id"), files=body.get("files"))
        return Response(BackupOutputSerializer(backup).data, status=201)


class AgentBackupDetailApi(ApiView):
    """``otb-agent`` fetches one of its box's backups, files with their text, to restore it."""

    authentication_classes = [BearerTokenAuthentication]
    permission_classes = [IsAgent]

    class OutputSerializer(BackupOutputSerializer):
        files = BackupFileSerializer(many=True)

        class Meta(BackupOutputSerializer.Meta):
            fields = [*BackupOutputSerializer.Meta.fields, "files"]

    @extend_schema(
        parameters=[OpenApiParameter("backup_id", OpenApiTypes.UUID, OpenApiParameter.PATH)],
        responses=OutputSerializer,
    )
    def get(self, request: Request, backup_id: Any) -> Response:
        box = cast(AgentPrincipal, request.user).box
        backup = backup_get_for_box(box_id=box.pk, backup_id=backup_id)
        return Response(self.OutputSerializer(backup).data)
