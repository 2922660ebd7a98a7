"""The one way the gateway touches the host: commands, child processes and its state files.

Everything that reads or changes the host goes through a ``Runner``: the converger and the
supervisor never call ``subprocess`` or ``os`` themselves, so tests give them a recording runner
(no root needed) and ``--dry-run`` gives them one that prints what would change.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, TextIO, Tuple

from otb_agent.util import write_file_atomic

COMMAND_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Completed:
    argv: Tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


class CommandError(Exception):
    """A command the gateway ran failed (or could not be started)."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr = stderr.strip()
        detail = self.stderr.splitlines()[-1] if self.stderr else f"exit status {returncode}"
        super().__init__(f"{shlex.join(self.argv)}: {detail}")


@dataclass(frozen=True)
class ProcessInfo:
    """A live process as /proc shows it."""

    argv: Tuple[str, ...]
    zombie: bool = False


def command_line(argv: Sequence[str]) -> str:
    return shlex.join(argv)


class Runner:
    """Runs commands for real (as root, on the host)."""

    dry_run = False

    def __init__(self) -> None:
        self._children: Dict[int, "subprocess.Popen[bytes]"] = {}

    # -- commands -------------------------------------------------------------------------------

    def run(
        self,
        argv: Sequence[str],
        *,
        input: Optional[str] = None,
        mutates: bool = True,
        check: bool = True,
        secret_input: bool = False,
    ) -> Completed:
        """Run ``argv`` (``mutates=False`` for a command that only reads). Raises CommandError for a
        non-zero exit when ``check``, and always when the program cannot be started."""
        try:
            proc = subprocess.run(
                list(argv),
                input=input,
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise CommandError(argv, -1, str(e)) from None
        done = Completed(tuple(argv), proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode != 0:
            raise CommandError(argv, proc.returncode, proc.stderr or proc.stdout)
        return done

    # -- child processes ------------------------------------------------------------------------

    def spawn(self, argv: Sequence[str], *, log_path: str) -> int:
        """Start ``argv`` in its own session (a signal to the gateway's terminal or process group does
        not reach it, and it outlives the gateway) with stdout/stderr appended to ``log_path``."""
        with open(log_path, "ab") as log:
            try:
                proc = subprocess.Popen(
                    list(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    close_fds=True,
                )
            except OSError as e:
                raise CommandError(argv, -1, str(e)) from None
        self._children[proc.pid] = proc
        return proc.pid

    def process(self, pid: int) -> Optional[ProcessInfo]:
        """The live process ``pid`` (None once it has exited; a child of ours is reaped here)."""
        child = self._children.get(pid)
        if child is not None and child.poll() is not None:
            del self._children[pid]
            return None
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                raw = f.read()
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
                stat = f.read()
        except OSError:
            return None
        state = stat.rpartition(")")[2].split()[:1]
        argv = tuple(part.decode("utf-8", "replace") for part in raw.split(b"\0") if part)
        return ProcessInfo(argv=argv, zombie=state == ["Z"] or not argv)

    def signal(self, pid: int, sig: int = signal.SIGTERM) -> bool:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return False
        except PermissionError:
            return False
        return True

    # -- state files ----------------------------------------------------------------------------

    def read_file(self, path: str) -> Optional[str]:
        try:
            with open(path, encoding="utf-8") as f:
                return f.read()
        except OSError:
            return None

    def write_file(self, path: str, text: str, mode: int = 0o600) -> None:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        write_file_atomic(path, text, mode)

    def remove_file(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    def list_dir(self, path: str) -> List[str]:
        try:
            return sorted(os.listdir(path))
        except OSError:
            return []


class DryRunRunner(Runner):
    """Reads the host for real (a read that fails reads as empty), prints every change instead of
    making it: ``+ <command>``, the script it would feed on stdin (secrets hidden), files it would
    write, processes it would start or stop."""

    dry_run = True

    def __init__(self, out: Optional[TextIO] = None) -> None:
        super().__init__()
        self.out = out or sys.stdout
        self._next_pid = 1 << 30
        self._fake: Dict[int, ProcessInfo] = {}

    def _print(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()

    def run(
        self,
        argv: Sequence[str],
        *,
        input: Optional[str] = None,
        mutates: bool = True,
        check: bool = True,
        secret_input: bool = False,
    ) -> Completed:
        if not mutates:
            try:
                return super().run(argv, input=input, mutates=False, check=check)
            except CommandError as e:
                return Completed(tuple(argv), e.returncode, "", e.stderr)
        self._print(f"+ {command_line(argv)}")
        if input is not None:
            if secret_input:
                self._print("  <<< (secret, not shown)")
            else:
                for line in input.rstrip("\n").splitlines():
                    self._print(f"  <<< {line}")
        return Completed(tuple(argv), 0, "", "")

    def spawn(self, argv: Sequence[str], *, log_path: str) -> int:
        self._print(f"+ start {command_line(argv)} (output to {log_path})")
        self._next_pid += 1
        self._fake[self._next_pid] = ProcessInfo(argv=tuple(argv))
        return self._next_pid

    def process(self, pid: int) -> Optional[ProcessInfo]:
        if pid in self._fake:
            return self._fake[pid]
        return super().process(pid)

    def signal(self, pid: int, sig: int = signal.SIGTERM) -> bool:
        self._print(f"+ kill -{int(sig)} {pid}")
        self._fake.pop(pid, None)
        return True

    def write_file(self, path: str, text: str, mode: int = 0o600) -> None:
        self._print(f"+ write {path} (mode {mode:o}, {len(text)} bytes)")

    def remove_file(self, path: str) -> None:
        self._print(f"+ rm -f {path}")
