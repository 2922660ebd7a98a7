"""Bounded telemetry queue, seq counter, dropped-sample accounting and command results.

Two implementations with the same interface:

* :class:`SqliteStore` -- ``agent.db`` in the state dir (WAL, synchronous=NORMAL); survives
  restarts. Used by ``otb-agent run``.
* :class:`MemoryStore` -- bounded in-memory deque; used by the simulator for many boxes.

Dropped-sample accounting: when the queue is full the oldest messages are dropped. Their
sample count (plus any ``dropped`` they themselves carried) is attached, in the same
transaction, to the telemetry message being enqueued as its ``dropped`` field. So each
dropped count lives in exactly one place (a queued message) until the server acks it, and
the server counts it exactly once (it dedupes by seq).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import sqlite3
import time
from typing import Any, Deque, Dict, List, Optional, Protocol, Tuple

import otb_protocol

DEFAULT_CAP = 10_000
COMMAND_HISTORY = 1000  # command results remembered (ids older than this are forgotten)


def _telemetry_text(seq: int, samples: List[Dict[str, Any]], dropped: int) -> str:
    msg: Dict[str, Any] = {"type": "telemetry", "seq": seq, "samples": samples}
    if dropped:
        msg["dropped"] = dropped
    return otb_protocol.encode(msg, validate=False)


def _renumbered(text: str, seq: int) -> str:
    msg = json.loads(text)
    msg["seq"] = seq
    return otb_protocol.encode(msg, validate=False)


class Store(Protocol):
    """What the agent needs of a store (:class:`SqliteStore` or :class:`MemoryStore`)."""

    persistent: bool
    dropped_total: int

    def append(self, samples: List[Dict[str, Any]]) -> int:
        """Queue one telemetry message (dropping the oldest when full); its seq."""

    def pending(self, after_seq: int, limit: int) -> List[Tuple[int, str]]:
        """Up to ``limit`` queued (seq, frame text) after ``after_seq``, oldest first."""

    def ack(self, seq: int) -> bool:
        """Remove the message ``seq``; False if it was not queued."""

    def ack_upto(self, seq: int) -> int:
        """Remove every message up to ``seq`` (cumulative ack); how many were removed."""

    def next_seq(self) -> int:
        """The seq the next appended message gets."""

    def renumber_after(self, seq: int) -> int:
        """Number every queued message after ``seq`` (in order, ``seq + 1`` upwards) and continue from
        there: the server has seen up to ``seq`` although this store never numbered that far (its
        counter was reset: state lost, a new disk), so these were never sent. How many."""

    def depth(self) -> int:
        """How many messages are queued."""

    def dropped_unreported(self) -> int:
        """Samples dropped by the cap whose count is still waiting in the queue."""

    def command_get(self, cid: str) -> Optional[Dict[str, Any]]:
        """The record of command ``cid`` (``kind``, ``state``, ``boot_id``, ``result``), if known."""

    def command_start(self, cid: str, kind: str, boot_id: str) -> None:
        """Remember that command ``cid`` started (before running it)."""

    def command_finish(self, cid: str, result: Dict[str, Any]) -> None:
        """Remember the result frame of command ``cid``."""

    def meta_get(self, key: str) -> Optional[str]:
        """A small persistent value (``applied_config_hash``...)."""

    def meta_set(self, key: str, value: Optional[str]) -> None:
        """Set (or, with None, delete) a small persistent value."""

    def close(self) -> None:
        """Release the store."""


class MemoryStore:
    """In-memory store with the same interface as :class:`SqliteStore`."""

    persistent = False

    def __init__(self, cap: int = DEFAULT_CAP) -> None:
        self.cap = max(1, cap)
        # (seq, text, nsamples, dropped)
        self._q: Deque[Tuple[int, str, int, int]] = collections.deque()
        self._next_seq = 1
        self.dropped_total = 0
        self._commands: "collections.OrderedDict[str, Dict[str, Any]]" = collections.OrderedDict()
        self._meta: Dict[str, str] = {}

    # -- telemetry queue
    def append(self, samples: List[Dict[str, Any]]) -> int:
        carried = 0
        while len(self._q) >= self.cap:
            _, _, n, d = self._q.popleft()
            carried += n + d
            self.dropped_total += n
        seq = self._next_seq
        self._next_seq += 1
        self._q.append((seq, _telemetry_text(seq, samples, carried), len(samples), carried))
        return seq

    def pending(self, after_seq: int, limit: int) -> List[Tuple[int, str]]:
        out = []
        for seq, text, _, _ in self._q:
            if seq > after_seq:
                out.append((seq, text))
                if len(out) >= limit:
                    break
        return out

    def ack(self, seq: int) -> bool:
        q = self._q
        if q and q[0][0] == seq:
            q.popleft()
            return True
        for i, item in enumerate(q):
            if item[0] == seq:
                del q[i]
                return True
        return False

    def renumber_after(self, seq: int) -> int:
        items = list(self._q)
        self._q = collections.deque(
            (seq + 1 + index, _renumbered(text, seq + 1 + index), nsamples, dropped)
            for index, (_, text, nsamples, dropped) in enumerate(items)
        )
        self._next_seq = max(self._next_seq, seq + 1 + len(items))
        return len(items)

    def ack_upto(self, seq: int) -> int:
        n = 0
        while self._q and self._q[0][0] <= seq:
            self._q.popleft()
            n += 1
        if self._next_seq <= seq:
            self._next_seq = seq + 1
        return n

    def depth(self) -> int:
        return len(self._q)

    def next_seq(self) -> int:
        return self._next_seq

    def dropped_unreported(self) -> int:
        return sum(item[3] for item in self._q)

    # -- commands
    def command_get(self, cid: str) -> Optional[Dict[str, Any]]:
        return self._commands.get(cid)

    def command_start(self, cid: str, kind: str, boot_id: str) -> None:
        self._commands[cid] = {
            "id": cid,
            "kind": kind,
            "state": "running",
            "boot_id": boot_id,
            "result": None,
        }
        while len(self._commands) > COMMAND_HISTORY:
            self._commands.popitem(last=False)

    def command_finish(self, cid: str, result: Dict[str, Any]) -> None:
        rec = self._commands.get(cid)
        if rec is None:
            rec = self._commands[cid] = {
                "id": cid,
                "kind": "",
                "state": "done",
                "boot_id": "",
                "result": None,
            }
        rec["state"] = "done"
        rec["result"] = result

    # -- small key/value metadata
    def meta_get(self, key: str) -> Optional[str]:
        return self._meta.get(key)

    def meta_set(self, key: str, value: Optional[str]) -> None:
        if value is None:
            self._meta.pop(key, None)
        else:
            self._meta[key] = value

    def close(self) -> None:
        pass


class SqliteStore:
    persistent = True

    def __init__(self, path: str, cap: int = DEFAULT_CAP) -> None:
        self.cap = max(1, cap)
        self.path = path
        new = not os.path.exists(path)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        if new:
            with contextlib.suppress(OSError):
                os.chmod(path, 0o600)
        db = self._db
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=5000")
        db.executescript(
            """
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS telemetry (
                seq INTEGER PRIMARY KEY,
                payload TEXT NOT NULL,
                nsamples INTEGER NOT NULL,
                dropped INTEGER NOT NULL DEFAULT 0
            );
            CREATE TABLE IF NOT EXISTS commands (
                id TEXT PRIMARY KEY,
                kind TEXT NOT NULL,
                state TEXT NOT NULL,
                boot_id TEXT NOT NULL,
                result TEXT,
                started_at REAL NOT NULL,
                finished_at REAL
            );
            """
        )
        self._depth = db.execute("SELECT COUNT(*) FROM telemetry").fetchone()[0]
        self.dropped_total = int(self.meta_get("dropped_total") or 0)

    def _tx(self) -> _Tx:
        return _Tx(self._db)

    # -- telemetry queue
    def _get_next_seq(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key='next_seq'").fetchone()
        seq = int(row[0]) if row else 1
        mx = self._db.execute("SELECT MAX(seq) FROM telemetry").fetchone()[0]
        if mx is not None and mx >= seq:
            seq = mx + 1
        return seq

    def append(self, samples: List[Dict[str, Any]]) -> int:
        db = self._db
        with self._tx():
            carried = 0
            excess = self._depth + 1 - self.cap
            if excess > 0:
                row = db.execute(
                    "SELECT COALESCE(SUM(nsamples),0), COALESCE(SUM(dropped),0), COUNT(*), MAX(seq) FROM "
                    "(SELECT nsamples, dropped, seq FROM telemetry ORDER BY seq LIMIT ?)",
                    (excess,),
                ).fetchone()
                lost, lost_carried, count, maxseq = row
                db.execute("DELETE FROM telemetry WHERE seq <= ?", (maxseq,))
                self._depth -= count
                carried = lost + lost_carried
                self.dropped_total += lost
                db.execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES('dropped_total', ?)",
                    (str(self.dropped_total),),
                )
            seq = self._get_next_seq()
            db.execute(
                "INSERT INTO telemetry(seq, payload, nsamples, dropped) VALUES(?,?,?,?)",
                (seq, _telemetry_text(seq, samples, carried), len(samples), carried),
            )
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES('next_seq', ?)", (str(seq + 1),))
            self._depth += 1
        return seq

    def pending(self, after_seq: int, limit: int) -> List[Tuple[int, str]]:
        return list(
            self._db.execute(
                "SELECT seq, payload FROM telemetry WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)
            )
        )

    def ack(self, seq: int) -> bool:
        n = self._db.execute("DELETE FROM telemetry WHERE seq = ?", (seq,)).rowcount
        self._depth -= n
        return n > 0

    def renumber_after(self, seq: int) -> int:
        db = self._db
        with self._tx():
            rows = db.execute("SELECT seq, payload FROM telemetry ORDER BY seq").fetchall()
            # every new number is above every old one (``seq`` >= the store's next), so no clash
            for index, (old, text) in enumerate(rows):
                new = seq + 1 + index
                db.execute(
                    "UPDATE telemetry SET seq = ?, payload = ? WHERE seq = ?",
                    (new, _renumbered(text, new), old),
                )
            if self._get_next_seq() <= seq + len(rows):
                db.execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES('next_seq', ?)",
                    (str(seq + 1 + len(rows)),),
                )
        return len(rows)

    def ack_upto(self, seq: int) -> int:
        with self._tx():
            n = self._db.execute("DELETE FROM telemetry WHERE seq <= ?", (seq,)).rowcount
            if self._get_next_seq() <= seq:
                self._db.execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES('next_seq', ?)", (str(seq + 1),)
                )
        self._depth -= n
        return n

    def depth(self) -> int:
        return self._depth

    def next_seq(self) -> int:
        return self._get_next_seq()

    def dropped_unreported(self) -> int:
        return int(self._db.execute("SELECT COALESCE(SUM(dropped),0) FROM telemetry").fetchone()[0])

    # -- commands
    def command_get(self, cid: str) -> Optional[Dict[str, Any]]:
        row = self._db.execute(
            "SELECT id, kind, state, boot_id, result FROM commands WHERE id = ?", (cid,)
        ).fetchone()
        if row is None:
            return None
        return {
            "id": row[0],
            "kind": row[1],
            "state": row[2],
            "boot_id": row[3],
            "result": json.loads(row[4]) if row[4] else None,
        }

    def command_start(self, cid: str, kind: str, boot_id: str) -> None:
        with self._tx():
            self._db.execute(
                "INSERT OR REPLACE INTO commands(id, kind, state, boot_id, result, started_at) "
                "VALUES(?,?,'running',?,NULL,?)",
                (cid, kind, boot_id, time.time()),
            )
            self._db.execute(
                "DELETE FROM commands WHERE id NOT IN "
                "(SELECT id FROM commands ORDER BY started_at DESC LIMIT ?)",
                (COMMAND_HISTORY,),
            )

    def command_finish(self, cid: str, result: Dict[str, Any]) -> None:
        text = json.dumps(result, separators=(",", ":"))
        cur = self._db.execute(
            "UPDATE commands SET state='done', result=?, finished_at=? WHERE id=?", (text, time.time(), cid)
        )
        if cur.rowcount == 0:
            self._db.execute(
                "INSERT INTO commands(id, kind, state, boot_id, result, started_at, finished_at) "
                "VALUES(?,'','done','',?,?,?)",
                (cid, text, time.time(), time.time()),
            )

    # -- small key/value metadata
    def meta_get(self, key: str) -> Optional[str]:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def meta_set(self, key: str, value: Optional[str]) -> None:
        if value is None:
            self._db.execute("DELETE FROM meta WHERE key = ?", (key,))
        else:
            self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES(?, ?)", (key, value))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._db.close()


class _Tx:
    def __init__(self, db: Any) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.db.execute("COMMIT")
        else:
            self.db.execute("ROLLBACK")
