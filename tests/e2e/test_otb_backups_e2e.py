"""A stock OverTheBox box's backup and restore over real HTTP (uvicorn), in shell as the box does it:
our ``backup`` command reaches it through ``actions/todo``; ``stat -c '%a;%u;%g'``, jq's pretty-printed
file objects PUT one per call through curl shaped like ``otb_call``, the action reported done; then our
``restore`` command: the link from ``GET …/backups/{id}`` fetched with plain curl (no header) and piped
into tar extracting from the root, as ``sysupgrade --restore-backup -`` does."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from fleet.commands.backups import backup_restore
from fleet.commands.choices import CommandKind, CommandState
from fleet.commands.models import Backup, BackupFile, Command
from fleet.commands.services import command_create
from fleet.core.audit import Actor
from fleet.core.choices import BoxProtocol
from otbcompat.models import OtbDevice
from otbcompat.services import device_subscribe, service_name

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not all(shutil.which(tool) for tool in ("curl", "jq", "tar", "stat")),
        reason="curl, jq, tar and stat are needed to act like the box",
    ),
]

# The box's calls: otb_call's curl (max time 5 s, JSON content type on every call, the version header,
# the Bearer), a backup loop over files building each object with jq, and the restore pipe.
BOX_SHELL = r"""
set -e
otb_call() {
    method=$1; path=$2; shift 2
    curl --silent --show-error --max-time 5 -X "$method" -H "Content-Type: application/json" \
        -H "X-Overthebox-Version: 1.1.3" -H "Authorization: Bearer $JWT" "$@" "$OTB_BASE/1.0/$path"
}
service_path="devices/$DEVICE_ID/service/$SERVICE"

do_poll() {
    otb_call GET "devices/$DEVICE_ID/actions/todo" > "$WORK/todo.json"
}

do_report() {
    otb_call PUT "devices/$DEVICE_ID/actions/$1" --data '{"status": "done", "details": ""}' > /dev/null
}

do_backup() {
    start=$(jq -n -c --arg id "$ACTION_ID" '{ device_action_id: $id }')
    backup_id=$(otb_call POST "$service_path/backups" --data "$start" | jq -r .backup_id)
    echo "$backup_id" > "$WORK/backup_id"
    for file in $FILES; do
        stat=$(stat -c '%a;%u;%g' "$file")
        if [ -L "$file" ]; then link=$(readlink "$file"); content=""; sym=true
        else link=""; content=$(cat "$file"); sym=false; fi
        body=$(jq -n --arg filename "$file" --arg mode "${stat%%;*}" \
            --arg uid "$(echo "$stat" | cut -d';' -f2)" --arg gid "${stat##*;}" \
            --arg sym "$sym" --arg link "$link" --arg content "$content" \
            '{filename: $filename, mode: $mode, uid: ($uid|tonumber), gid: ($gid|tonumber),
              is_symlink: ($sym == "true"), symlink: $link, content: $content}')
        otb_call PUT "$service_path/backups/$backup_id" --data "$body" > /dev/null
    done
}

do_restore() {
    url=$(otb_call GET "$service_path/backups/$1" | jq -r .backup_url)
    case "$url" in http*) ;; *) echo "no backup url: $url" >&2; exit 1 ;; esac
    curl --silent --show-error "$url" | tar -C "$RESTORE_ROOT" -xzpf - --same-owner
}

"do_$@"
"""


def box_shell(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", BOX_SHELL, "box", *args],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def poll(env: dict[str, str], work: Path) -> dict[str, Any]:
    done = box_shell(env, "poll")
    assert done.returncode == 0, done.stderr
    return dict(json.loads((work / "todo.json").read_text()))


def test_otb_box_backs_up_then_restores_over_real_http(
    asgi_server: Any, box_factory: Any, people: Any, tmp_path: Path
) -> None:
    # given a stock box linked to a claimed box of the organisation, and a backup action for it
    box = box_factory(organization=people.org)
    subscription = device_subscribe({"macaddr": "00:0d:b9:4a:11:31", "board": "apu2"}, source_ip="192.0.2.31")
    now = timezone.now()
    OtbDevice.objects.filter(id=subscription.device.id).update(box=box, linked_at=now, confirmed_at=now)
    box.protocol = BoxProtocol.OTB
    box.applied_config_hash = box.config_hash
    box.save(update_fields=["protocol", "applied_config_hash"])
    admin = Actor.for_user(people.admin)
    action = command_create(actor=admin, box=box, kind=CommandKind.BACKUP)
    # and its configuration files: text with tabs and quotes, a private file, a symlink
    etc = tmp_path / "box" / "etc"
    (etc / "config").mkdir(parents=True)
    network = "config interface 'lan'\n\toption ipaddr \"192.168.100.1\"\n\n# end"
    (etc / "config" / "network").write_text(network)
    (etc / "shadow").write_text("root:$1$x$y:19000:0:99999:7:::")
    os.chmod(etc / "shadow", 0o600)
    os.chown(etc / "shadow", 0, 42)
    os.symlink("/usr/share/zoneinfo/UTC", etc / "localtime")
    files = [str(etc / "config" / "network"), str(etc / "shadow"), str(etc / "localtime")]
    env = {
        "OTB_BASE": asgi_server.url,
        "JWT": subscription.jwt,
        "DEVICE_ID": str(subscription.device.id),
        "SERVICE": service_name(box),
        "FILES": " ".join(files),
        "WORK": str(tmp_path),
    }

    # when the box polls, gets the backup action, runs it and reports it done
    todo = poll(env, tmp_path)
    assert (todo["id"], todo["action"]) == (str(action.pk), "backup"), todo
    done = box_shell({**env, "ACTION_ID": todo["id"]}, "backup")
    assert done.returncode == 0, done.stderr
    assert box_shell(env, "report", todo["id"]).returncode == 0
    action.refresh_from_db()
    assert action.state == CommandState.SUCCEEDED

    # then the server holds the files as the box had them
    backup = Backup.objects.get(pk=(tmp_path / "backup_id").read_text().strip())
    assert (backup.box_id, backup.command_id, backup.file_count) == (box.pk, action.pk, 3)
    stored = {item.filename: item for item in BackupFile.objects.filter(backup=backup)}
    assert stored[files[0]].content == network and stored[files[0]].mode == 0o644
    assert (stored[files[1]].mode, stored[files[1]].gid) == (0o600, 42)
    assert stored[files[2]].is_symlink and stored[files[2]].symlink == "/usr/share/zoneinfo/UTC"

    # when an admin restores it: the box gets the restore action naming the backup, and restores it
    # into an empty root
    restore = backup_restore(actor=admin, backup=backup)
    todo = poll(env, tmp_path)
    assert (todo["id"], todo["action"], todo["arguments"]) == (
        str(restore.pk),
        "restore",
        {"backup_id": str(backup.pk)},
    )
    root = tmp_path / "restored"
    root.mkdir()
    done = box_shell({**env, "RESTORE_ROOT": str(root)}, "restore", todo["arguments"]["backup_id"])
    assert done.returncode == 0, done.stderr
    assert box_shell(env, "report", todo["id"]).returncode == 0
    assert Command.objects.get(pk=restore.pk).state == CommandState.SUCCEEDED

    # then every file is back with its text, mode and owner, the symlink too
    back = root / str(etc).lstrip("/")
    assert (back / "config" / "network").read_text() == network
    shadow = (back / "shadow").stat()
    assert (shadow.st_mode & 0o7777, shadow.st_uid, shadow.st_gid) == (0o600, 0, 42)
    assert os.readlink(back / "localtime") == "/usr/share/zoneinfo/UTC"

    # and another box's JWT cannot get the link
    intruder = device_subscribe({"macaddr": "00:0d:b9:4a:11:32", "board": "apu2"}, source_ip="192.0.2.32")
    refused = box_shell({**env, "JWT": intruder.jwt, "RESTORE_ROOT": str(root)}, "restore", str(backup.pk))
    assert refused.returncode != 0
    answer = subprocess.run(
        [
            "curl",
            "--silent",
            "-H",
            "Content-Type: application/json",
            "-H",
            f"Authorization: Bearer {intruder.jwt}",
            f"{asgi_server.url}/1.0/devices/{subscription.device.id}/service/{service_name(box)}/backups/{backup.pk}",
        ],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    assert json.loads(answer.stdout)["class"] == "Client::Forbidden"
