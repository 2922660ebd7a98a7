"""Configuration backups: the agent's upload, the person API (list, file, diff, tar.gz, restore,
delete), retention, bounds, and who may see what."""

from __future__ import annotations

import io
import tarfile
from typing import Any

import pytest
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext, override_settings

from fleet.commands.choices import CommandKind, CommandState
from fleet.commands.models import Backup, BackupFile, Command
from fleet.commands.services import command_create
from fleet.core.audit import Actor
from fleet.core.models import AuditLog

pytestmark = pytest.mark.django_db

NETWORK = "config interface 'lan'\n\toption proto 'static'\n\toption ipaddr '192.168.100.1'\n"


def file(filename: str, content: Any = "", mode: Any = "644", **extra: Any) -> dict[str, Any]:
    return {
        "filename": filename,
        "mode": mode,
        "uid": 0,
        "gid": 0,
        "is_symlink": False,
        "symlink": "",
        "content": content,
        **extra,
    }


@pytest.fixture
def box(box_factory: Any, people: Any) -> Any:
    return box_factory(organization=people.org)


@pytest.fixture
def agent(box: Any, agent_token_factory: Any, api_client: Any) -> Any:
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {agent_token_factory(box)}")
    return api_client


def backup_command(box: Any) -> Command:
    return command_create(actor=Actor.system("test"), box=box, kind=CommandKind.BACKUP)


def upload(agent: Any, box: Any, files: list[dict[str, Any]]) -> Any:
    return agent.post(
        "/api/v1/agent/backups", {"command_id": str(backup_command(box).pk), "files": files}, format="json"
    )


def test_agent_uploads_a_backup_and_people_read_it(
    agent: Any, box: Any, people: Any, client_for: Any
) -> None:
    # given an agent answering a backup command with two files and a symlink
    files = [
        file("/etc/config/network", NETWORK, mode="600"),
        file("/etc/otb-agent/config.json", '{"a": 1}\n', uid=1000, gid=100),
        file("/etc/localtime", is_symlink=True, symlink="/usr/share/zoneinfo/UTC"),
    ]
    # when it uploads them
    response = upload(agent, box, files)
    # then the backup is stored with its files, modes and owners, linked to the command
    assert response.status_code == 201, response.content
    backup = Backup.objects.get(pk=response.json()["id"])
    assert backup.file_count == 3 and backup.source == "agent"
    assert backup.command is not None and backup.command.kind == "backup"
    stored = BackupFile.objects.get(backup=backup, filename="/etc/config/network")
    assert (stored.mode, stored.content) == (0o600, NETWORK)
    # and a viewer of the organisation lists it and reads a file
    viewer = client_for(people.viewer)
    listed = viewer.get(f"/api/v1/boxes/{box.pk}/backups/").json()
    assert [item["id"] for item in listed["results"]] == [str(backup.pk)]
    detail = viewer.get(f"/api/v1/boxes/{box.pk}/backups/{backup.pk}/").json()
    assert [(f["filename"], f["mode"]) for f in detail["files"]] == [
        ("/etc/config/network", "600"),
        ("/etc/localtime", "644"),
        ("/etc/otb-agent/config.json", "644"),
    ]
    one = viewer.get(f"/api/v1/boxes/{box.pk}/backups/{backup.pk}/file", {"path": "/etc/config/network"})
    assert one.status_code == 200 and one.json()["content"] == NETWORK
    missing = viewer.get(f"/api/v1/boxes/{box.pk}/backups/{backup.pk}/file", {"path": "/etc/nope"})
    assert missing.status_code == 404
    # the agent fetches it back, files with their text
    fetched = agent.get(f"/api/v1/agent/backups/{backup.pk}").json()
    assert {f["filename"]: f["content"] for f in fetched["files"]}["/etc/config/network"] == NETWORK


def test_the_archive_is_a_tar_gz_with_modes_owners_and_symlinks(
    agent: Any, box: Any, people: Any, client_for: Any
) -> None:
    files = [
        file("/etc/config/network", NETWORK, mode="600"),
        file("/etc/dropbear/authorized_keys", "ssh-ed25519 AAAA\n", mode="640", uid=0, gid=50),
        file("/etc/localtime", is_symlink=True, symlink="/usr/share/zoneinfo/UTC", mode="777"),
    ]
    backup_id = upload(agent, box, files).json()["id"]
    response = client_for(people.viewer).get(f"/api/v1/boxes/{box.pk}/backups/{backup_id}/archive")
    assert response.status_code == 200 and response["Content-Type"] == "application/gzip"
    assert "attachment" in response["Content-Disposition"]
    with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as archive:
        members = {member.name: member for member in archive.getmembers()}
        assert set(members) == {"etc/config/network", "etc/dropbear/authorized_keys", "etc/localtime"}
        network = members["etc/config/network"]
        assert (network.mode, network.uid, network.gid, network.isfile()) == (0o600, 0, 0, True)
        extracted = archive.extractfile(network)
        assert extracted is not None and extracted.read().decode() == NETWORK
        keys = members["etc/dropbear/authorized_keys"]
        assert (keys.mode, keys.gid) == (0o640, 50)
        link = members["etc/localtime"]
        assert link.issym() and link.linkname == "/usr/share/zoneinfo/UTC"


def test_diff_between_two_backups_file_by_file(agent: Any, box: Any, people: Any, client_for: Any) -> None:
    old = upload(
        agent,
        box,
        [file("/etc/config/network", NETWORK), file("/etc/config/old", "x\n"), file("/etc/same", "s\n")],
    ).json()["id"]
    new = upload(
        agent,
        box,
        [
            file("/etc/config/network", NETWORK.replace("192.168.100.1", "192.168.1.1"), mode="600"),
            file("/etc/config/new", "y\n"),
            file("/etc/same", "s\n"),
        ],
    ).json()["id"]
    response = client_for(people.viewer).get(f"/api/v1/boxes/{box.pk}/backups/diff", {"old": old, "new": new})
    assert response.status_code == 200, response.content
    files = {item["filename"]: item for item in response.json()["files"]}
    network = files["/etc/config/network"]
    assert network["status"] == "changed"
    assert network["diff"].startswith("--- a/etc/config/network\n+++ b/etc/config/network\n")
    assert "-\toption ipaddr '192.168.100.1'\n+\toption ipaddr '192.168.1.1'\n" in network["diff"]
    assert network["meta"] == "mode 644, owner 0:0 -> mode 600, owner 0:0"
    assert files["/etc/config/old"]["status"] == "removed" and "-x\n" in files["/etc/config/old"]["diff"]
    assert files["/etc/config/new"]["status"] == "added" and "+y\n" in files["/etc/config/new"]["diff"]
    assert files["/etc/same"] == {"filename": "/etc/same", "status": "unchanged", "diff": "", "meta": ""}
    # a bad id names its field
    bad = client_for(people.viewer).get(f"/api/v1/boxes/{box.pk}/backups/diff", {"old": "nope", "new": new})
    assert bad.status_code == 400 and "old" in bad.json()["error"]["fields"]


@override_settings(OTB={**settings.OTB, "BACKUP_KEEP_PER_BOX": 3})
def test_retention_keeps_the_newest_backups_of_each_box(
    agent: Any, box: Any, box_factory: Any, people: Any
) -> None:
    other = box_factory(organization=people.org)
    other_backup = Backup.objects.create(box=other, source="agent")
    made = [upload(agent, box, [file("/etc/n", f"{index}\n")]).json()["id"] for index in range(5)]
    kept = list(Backup.objects.filter(box=box).order_by("-created_at").values_list("pk", flat=True))
    assert [str(pk) for pk in kept] == made[:1:-1]  # the three newest
    assert not BackupFile.objects.filter(backup_id__in=made[:2]).exists()
    assert Backup.objects.filter(pk=other_backup.pk).exists()  # another box's backups are untouched


def test_restore_queues_a_restore_command_and_delete_is_audited(
    agent: Any, box: Any, people: Any, client_for: Any
) -> None:
    backup_id = upload(agent, box, [file("/etc/config/network", NETWORK)]).json()["id"]
    viewer, admin = client_for(people.viewer), client_for(people.admin)
    # a viewer may not restore; an admin may
    assert viewer.post(f"/api/v1/boxes/{box.pk}/backups/{backup_id}/restore").status_code == 403
    response = admin.post(f"/api/v1/boxes/{box.pk}/backups/{backup_id}/restore")
    assert response.status_code == 201, response.content
    command = Command.objects.get(pk=response.json()["id"])
    assert (command.kind, command.params, command.state) == ("restore", {"backup_id": backup_id}, "pending")
    # the same through the commands API
    again = admin.post(
        f"/api/v1/boxes/{box.pk}/commands/",
        {"kind": "restore", "params": {"backup_id": backup_id}},
        format="json",
    )
    assert again.status_code == 201, again.content
    # delete: viewers may not, admins may, and it is in the audit log
    assert viewer.delete(f"/api/v1/boxes/{box.pk}/backups/{backup_id}/").status_code == 403
    assert admin.delete(f"/api/v1/boxes/{box.pk}/backups/{backup_id}/").status_code == 204
    assert not Backup.objects.filter(pk=backup_id).exists()
    assert AuditLog.objects.filter(action="backup.delete", box_id=box.pk).exists()


def test_restore_command_must_name_a_backup_of_this_box(
    box: Any, box_factory: Any, people: Any, client_for: Any
) -> None:
    theirs = box_factory(organization=people.other_org)
    their_backup = Backup.objects.create(box=theirs, source="agent", file_count=1)
    empty = Backup.objects.create(box=box, source="agent")
    admin = client_for(people.admin)
    for params in (
        {},
        {"backup_id": "nope"},
        {"backup_id": str(their_backup.pk)},
        {"backup_id": str(empty.pk)},
    ):
        response = admin.post(
            f"/api/v1/boxes/{box.pk}/commands/", {"kind": "restore", "params": params}, format="json"
        )
        assert response.status_code == 400, (params, response.content)
        assert "params.backup_id" in response.json()["error"]["fields"]
    assert not Command.objects.filter(kind=CommandKind.RESTORE).exists()


def test_backups_of_another_organisation_are_invisible(
    agent: Any, box: Any, box_factory: Any, people: Any, client_for: Any, agent_token_factory: Any
) -> None:
    backup_id = upload(agent, box, [file("/etc/config/network", NETWORK)]).json()["id"]
    outsider = client_for(people.outsider)
    for path in ("", "file?path=/etc/config/network", "archive"):
        assert outsider.get(f"/api/v1/boxes/{box.pk}/backups/{backup_id}/{path}").status_code == 404
    assert outsider.get(f"/api/v1/boxes/{box.pk}/backups/").status_code == 404
    assert outsider.post(f"/api/v1/boxes/{box.pk}/backups/{backup_id}/restore").status_code == 404
    assert outsider.delete(f"/api/v1/boxes/{box.pk}/backups/{backup_id}/").status_code == 404
    # their own box in the path does not reach our backup either
    theirs = box_factory(organization=people.other_org)
    assert outsider.get(f"/api/v1/boxes/{theirs.pk}/backups/{backup_id}/").status_code == 404
    # another box's agent cannot fetch it, nor attach a backup to our command
    from rest_framework.test import APIClient

    their_agent = APIClient(HTTP_AUTHORIZATION=f"Bearer {agent_token_factory(theirs)}")
    assert their_agent.get(f"/api/v1/agent/backups/{backup_id}").status_code == 404
    stolen = their_agent.post(
        "/api/v1/agent/backups", {"command_id": str(backup_command(box).pk), "files": []}, format="json"
    )
    assert stolen.status_code == 400 and "command_id" in stolen.json()["error"]["fields"]
    # staff see it
    assert client_for(people.staff).get(f"/api/v1/boxes/{box.pk}/backups/{backup_id}/").status_code == 200
    assert Backup.objects.count() == 1


@pytest.mark.parametrize(
    ("files", "field"),
    [
        ("nope", "files"),
        ([file("etc/relative")], "files[0].filename"),
        ([file("/etc/../shadow")], "files[0].filename"),
        ([file("/etc/ok"), file("/etc/x", mode="0o644")], "files[1].mode"),
        ([file("/etc/x", mode=644)], "files[0].mode"),
        ([file("/etc/x", uid=-1)], "files[0].uid"),
        ([file("/etc/x", gid="0")], "files[0].gid"),
        ([file("/etc/x", is_symlink="yes")], "files[0].is_symlink"),
        ([file("/etc/x", is_symlink=True)], "files[0].symlink"),
        ([file("/etc/x", content="a\x00b")], "files[0].content"),
        ([file("/etc/x", content=["not text"])], "files[0].content"),
        ([file("/etc/x"), file("/etc/x")], "files[1].filename"),
        (["not an object"], "files[0]"),
    ],
)
def test_agent_upload_bad_input_names_the_field_and_writes_nothing(
    agent: Any, box: Any, files: Any, field: str
) -> None:
    response = upload(agent, box, files)
    assert response.status_code == 400, response.content
    assert field in response.json()["error"]["fields"], response.json()
    assert not Backup.objects.exists() and not BackupFile.objects.exists()


@pytest.mark.parametrize(
    ("raw_file", "field"),
    [
        ('{"filename": "/etc/x", "mode": "644", "content": "a\\ud800b"}', "files[0].content"),
        ('{"filename": "/etc/\\udfff", "mode": "644", "content": ""}', "files[0].filename"),
        (
            '{"filename": "/etc/x", "mode": "644", "is_symlink": true, "symlink": "/\\udfff"}',
            "files[0].symlink",
        ),
    ],
)
def test_agent_upload_of_text_postgresql_cannot_hold_is_a_400(
    agent: Any, box: Any, raw_file: str, field: str
) -> None:
    # a lone surrogate is valid JSON but no UTF-8: it must be refused, not reach the database
    body = f'{{"command_id": "{backup_command(box).pk}", "files": [{raw_file}]}}'
    response = agent.generic("POST", "/api/v1/agent/backups", body, content_type="application/json")
    assert response.status_code == 400, response.content
    assert field in response.json()["error"]["fields"]
    assert not Backup.objects.exists()


@override_settings(OTB={**settings.OTB, "BACKUP_MAX_FILES": 2, "BACKUP_MAX_FILE_BYTES": 10})
def test_agent_upload_over_the_bounds_writes_nothing(agent: Any, box: Any) -> None:
    too_many = upload(agent, box, [file(f"/etc/{index}") for index in range(3)])
    assert too_many.status_code == 400 and "filename" in too_many.json()["error"]["fields"]
    too_big = upload(agent, box, [file("/etc/big", "x" * 11)])
    assert too_big.status_code == 400 and "files[0].content" in too_big.json()["error"]["fields"]
    assert not Backup.objects.exists()


def test_backup_list_query_count_does_not_grow(agent: Any, box: Any, people: Any, client_for: Any) -> None:
    client = client_for(people.viewer)
    upload(agent, box, [file("/etc/a", "a")])
    with CaptureQueriesContext(connection) as one:
        client.get(f"/api/v1/boxes/{box.pk}/backups/")
    for index in range(4):
        upload(agent, box, [file("/etc/a", str(index))])
    with CaptureQueriesContext(connection) as five:
        assert len(client.get(f"/api/v1/boxes/{box.pk}/backups/").json()["results"]) == 5
    assert len(five) == len(one)


def test_backup_and_restore_are_command_kinds_people_can_send(box: Any, people: Any, client_for: Any) -> None:
    response = client_for(people.admin).post(
        f"/api/v1/boxes/{box.pk}/commands/", {"kind": "backup"}, format="json"
    )
    assert response.status_code == 201 and response.json()["state"] == CommandState.PENDING
    refused = client_for(people.admin).post(
        f"/api/v1/boxes/{box.pk}/commands/", {"kind": "backup", "params": {"x": 1}}, format="json"
    )
    assert refused.status_code == 400 and "params.x" in refused.json()["error"]["fields"]
