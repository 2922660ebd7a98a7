"""The box's configuration backup and its restore (the ``backup`` and ``restore`` commands).

What a backup holds (text files only, as the server stores them):

* from the agent's state directory, the configuration the server last gave (``config.json``) and the
  file the data plane writes from it (``ss-redir.json``), with every secret value replaced by
  ``"<redacted>"``: the server keeps those secrets encrypted and must not get them back in clear.
  They are kept to be read and compared; a restore never writes them (the server's configuration is
  applied again by the config cycle instead);
* the box's own files named in ``OTB_AGENT_BACKUP_PATHS`` (absolute paths separated by ``:``, e.g.
  ``/etc/config/network:/etc/config/dhcp``): these are written back by a restore.

Never in a backup: ``credentials.json`` (the agent token), the WireGuard private and preshared keys,
``agent.db``. A restore writes only paths this box backs up (a backup naming anything else, such as
``/etc/shadow``, gets it skipped), each file atomically with its mode, and its owner when running as root.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .dataplane.plan import SS_REDIR_CONFIG_FILE
from .util import CONFIG_FILE

PATHS_ENV = "OTB_AGENT_BACKUP_PATHS"
#: Files of the state directory a backup shows, secrets redacted; never restored.
SERVER_MANAGED = (CONFIG_FILE, SS_REDIR_CONFIG_FILE)
MAX_FILE_BYTES = 128 * 1024
REDACTED = "<redacted>"
_SECRET_WORDS = ("password", "preshared", "private_key", "secret", "token")


def backup_paths(environ: Optional[Dict[str, str]] = None) -> List[str]:
    """The box's own files to back up and restore, from ``OTB_AGENT_BACKUP_PATHS``: absolute,
    normalised paths only (others are ignored)."""
    raw = (environ if environ is not None else os.environ).get(PATHS_ENV, "")
    paths = []
    for item in raw.split(":"):
        item = item.strip()
        if item.startswith("/") and os.path.normpath(item) == item and item not in paths:
            paths.append(item)
    return paths


def _redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            key: REDACTED
            if isinstance(key, str) and any(word in key.lower() for word in _SECRET_WORDS) and item
            else _redact(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_redact(item) for item in value]
    return value


def _file_entry(path: str, content: str, st: os.stat_result) -> Dict[str, Any]:
    return {
        "filename": path,
        "mode": format(stat.S_IMODE(st.st_mode), "o"),
        "uid": st.st_uid,
        "gid": st.st_gid,
        "is_symlink": False,
        "symlink": "",
        "content": content,
    }


def _read_text(path: str) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
    """(the file's entry, None) or (None, why it is left out)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None, "missing"
    except OSError as e:
        return None, f"unreadable: {e.strerror or e}"
    if stat.S_ISLNK(st.st_mode):
        entry = _file_entry(path, "", st)
        entry.update(is_symlink=True, symlink=os.readlink(path), mode="777")
        return entry, None
    if not stat.S_ISREG(st.st_mode):
        return None, "not a regular file"
    if st.st_size > MAX_FILE_BYTES:
        return None, f"larger than {MAX_FILE_BYTES} bytes"
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        return None, f"unreadable: {e.strerror or e}"
    if b"\x00" in data:
        return None, "not a text file"
    try:
        return _file_entry(path, data.decode("utf-8"), st), None
    except UnicodeDecodeError:
        return None, "not a text file"


def collect(
    state_dir: Optional[str], paths: Sequence[str]
) -> Tuple[List[Dict[str, Any]], List[Dict[str, str]]]:
    """The files of a backup and the ones left out (``{"filename", "reason"}``)."""
    files: List[Dict[str, Any]] = []
    skipped: List[Dict[str, str]] = []
    if state_dir:
        for name in SERVER_MANAGED:
            path = os.path.join(os.path.abspath(state_dir), name)
            entry, why = _read_text(path)
            if entry is None:
                if why != "missing":
                    skipped.append({"filename": path, "reason": why or ""})
                continue
            if not entry["is_symlink"]:
                try:
                    entry["content"] = json.dumps(
                        _redact(json.loads(entry["content"])), indent=2, sort_keys=True
                    )
                except ValueError:
                    skipped.append({"filename": path, "reason": "not valid JSON"})
                    continue
            files.append(entry)
    for path in paths:
        entry, why = _read_text(path)
        if entry is None:
            skipped.append({"filename": path, "reason": why or ""})
        else:
            files.append(entry)
    return files, skipped


def _write_one(entry: Dict[str, Any]) -> None:
    path = entry["filename"]
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".otb-restore-", dir=directory)
    try:
        if entry.get("is_symlink"):
            os.close(fd)
            os.unlink(tmp)
            os.symlink(entry["symlink"], tmp)
        else:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(entry.get("content") or "")
            os.chmod(tmp, int(entry.get("mode") or "600", 8) & 0o7777)
            if hasattr(os, "geteuid") and os.geteuid() == 0:
                os.chown(tmp, int(entry.get("uid") or 0), int(entry.get("gid") or 0))
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def restore(files: Sequence[Dict[str, Any]], paths: Sequence[str]) -> Dict[str, Any]:
    """Write back the files of a backup that are among ``paths``; the others are skipped with why.
    Returns ``{"written": [...], "skipped": [{"filename", "reason"}], "failed": [{"filename", "error"}]}``."""
    allowed = set(paths)
    written: List[str] = []
    skipped: List[Dict[str, str]] = []
    failed: List[Dict[str, str]] = []
    for entry in files:
        path = entry.get("filename")
        if not isinstance(path, str):
            continue
        if os.path.basename(path) in SERVER_MANAGED and path not in allowed:
            skipped.append(
                {"filename": path, "reason": "managed by the server: its configuration is applied again"}
            )
            continue
        if path not in allowed:
            skipped.append({"filename": path, "reason": f"not a path this box backs up ({PATHS_ENV})"})
            continue
        try:
            _write_one(entry)
            written.append(path)
        except (OSError, ValueError) as e:
            failed.append({"filename": path, "error": str(e)[:300]})
    return {"written": written, "skipped": skipped, "failed": failed}
