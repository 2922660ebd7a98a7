"""The agent's backup collection and restore (otb_agent.backup): what goes in, what is redacted, what a
restore may write."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from otb_agent import backup


def test_collect_redacts_secrets_and_leaves_out_credentials_and_binary_files(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    config = {"credentials": {"shadowsocks": {"password": "s3cret", "method": "aes"}, "wireguard": {
        "preshared_key": "psk=", "address": "10.0.0.2"}}, "server": {"wg_public_key": "pub="}}  # fmt: skip
    (state / "config.json").write_text(json.dumps(config))
    (state / "credentials.json").write_text('{"agent_token": "otba_x"}')
    (state / "wg_private_key").write_text("priv=")
    binary = tmp_path / "blob"
    binary.write_bytes(b"\x00\x01")
    link = tmp_path / "localtime"
    os.symlink("/usr/share/zoneinfo/UTC", link)
    text = tmp_path / "network"
    text.write_text("config interface 'lan'\n")
    os.chmod(text, 0o640)

    files, skipped = backup.collect(str(state), [str(text), str(binary), str(link), str(tmp_path / "nope")])

    by_name = {item["filename"]: item for item in files}
    assert set(by_name) == {str(state / "config.json"), str(text), str(link)}
    saved = json.loads(by_name[str(state / "config.json")]["content"])
    assert saved["credentials"]["shadowsocks"] == {"password": "<redacted>", "method": "aes"}
    assert saved["credentials"]["wireguard"] == {"preshared_key": "<redacted>", "address": "10.0.0.2"}
    assert saved["server"]["wg_public_key"] == "pub="
    assert by_name[str(text)]["mode"] == "640" and by_name[str(text)]["content"] == "config interface 'lan'\n"
    assert by_name[str(link)]["is_symlink"] and by_name[str(link)]["symlink"] == "/usr/share/zoneinfo/UTC"
    assert {item["filename"]: item["reason"] for item in skipped} == {
        str(binary): "not a text file",
        str(tmp_path / "nope"): "missing",
    }


def test_restore_writes_only_the_paths_this_box_backs_up(tmp_path: Path) -> None:
    mine = tmp_path / "etc" / "config" / "network"
    other = tmp_path / "etc" / "shadow"
    link = tmp_path / "etc" / "localtime"
    entries: list[dict[str, Any]] = [
        {"filename": str(mine), "mode": "600", "uid": 0, "gid": 0, "is_symlink": False, "symlink": "",
         "content": "new\n"},
        {"filename": str(other), "mode": "644", "content": "root::0:0\n"},
        {"filename": str(link), "mode": "777", "is_symlink": True, "symlink": "/usr/share/zoneinfo/UTC"},
        {"filename": "/state/config.json", "mode": "600", "content": "{}"},
    ]  # fmt: skip

    outcome = backup.restore(entries, [str(mine), str(link)])

    assert outcome["written"] == [str(mine), str(link)] and outcome["failed"] == []
    assert mine.read_text() == "new\n" and (mine.stat().st_mode & 0o7777) == 0o600
    assert os.readlink(link) == "/usr/share/zoneinfo/UTC"
    assert not other.exists()
    assert [item["filename"] for item in outcome["skipped"]] == [str(other), "/state/config.json"]
    assert not [name for name in os.listdir(mine.parent) if name.startswith(".otb-restore-")]


def test_backup_paths_keeps_absolute_normalised_paths_only() -> None:
    environ = {
        backup.PATHS_ENV: "/etc/config/network: relative:/etc/../shadow::/etc/config/network:/etc/dhcp"
    }
    assert backup.backup_paths(environ) == ["/etc/config/network", "/etc/dhcp"]
