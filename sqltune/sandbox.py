"""Running untrusted SQL safely on SQLite.

Guards on every connection made here (:func:`harden`):

* an authorizer that allows only reading: SELECT, column reads, function
  calls and recursive CTEs. Everything else (ATTACH/DETACH, PRAGMA, INSERT,
  UPDATE, DELETE, CREATE, DROP, ALTER, transactions, ...) is denied, as is the
  ``load_extension()`` SQL function;
* extension loading disabled, ``PRAGMA query_only = ON``, temporary storage
  in memory (no spill files), at most 0 attached databases, and a 10 MB cap
  on any string/blob value;
* a per-query wall-clock limit enforced from a progress handler (so a
  runaway recursive CTE is interrupted), a row cap and a cap on the bytes a
  result may hold.

SQLite checks its progress handler only between virtual-machine steps, so one
long call of a string or blob function is not interrupted by it. Untrusted SQL
therefore runs in worker processes (:class:`WorkerPool`): before each query a
worker publishes its deadline in shared memory, and the parent kills a worker
that overruns it and starts a new one. Each worker's address space is capped
(``RLIMIT_AS``) and SQLite's heap has a hard limit, so a query that builds huge
values fails with ``memory_limit`` instead of taking the machine down.

Real databases are never opened for writing: :func:`snapshot_database` reads
the file through SQLite (read-only, honouring locks, the rollback journal and
the WAL, so only committed data is seen) into a private temporary copy, made
once per file version; workers query that copy.
"""

from __future__ import annotations

import atexit
import fcntl
import importlib
import math
import multiprocessing
import os
import resource
import shutil
import sqlite3
import struct
import sys
import tempfile
import time
import types
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence
from urllib.parse import quote

from sqltune.errors import SqltuneError

ERROR_KINDS = ("timeout", "error", "refused", "row_limit", "size_limit", "memory_limit")
DEFAULT_MAX_ROWS = 100_000
MAX_VALUE_BYTES = 10_000_000
# Bytes one result may hold (text and blobs by length, other values 8 bytes each): two results are
# compared in memory, so this bounds a worker's result memory whatever the row count.
DEFAULT_MAX_RESULT_BYTES = 64 * 2**20
# Address space a worker may add to what it had when it started, and SQLite's own heap inside it.
WORKER_MEMORY_BYTES = 1536 * 2**20
SQLITE_HEAP_BYTES = 768 * 2**20
# How far past its deadline a query may run before its worker is killed: the progress handler
# normally stops it at the deadline; the kill is for calls it cannot interrupt.
KILL_MARGIN_S = 0.2

_ALLOWED_ACTIONS = frozenset(
    {
        sqlite3.SQLITE_SELECT,
        sqlite3.SQLITE_READ,
        sqlite3.SQLITE_FUNCTION,
        getattr(sqlite3, "SQLITE_RECURSIVE", 33),
    }
)
_DENIED_FUNCTIONS = frozenset({"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer"})


@dataclass(frozen=True)
class QueryResult:
    """Rows of a query, or an error kind.

    ``error`` is None on success, else one of :data:`ERROR_KINDS`:
    ``timeout`` (ran past the time limit), ``refused`` (not a single read-only
    statement, or the authorizer denied something), ``row_limit`` (more rows
    than the cap), ``size_limit`` (a result larger than the byte cap),
    ``memory_limit`` (SQLite or the worker ran out of its memory budget),
    ``error`` (any other SQLite error: syntax, no such column...).
    """

    rows: list[tuple] | None = None
    error: str | None = None
    message: str = ""
    n_columns: int = 0
    columns: tuple[str, ...] = ()
    seconds: float = field(default=0.0, compare=False)

    @property
    def ok(self) -> bool:
        return self.error is None


def _authorizer(action, arg1, arg2, dbname, source):
    if action not in _ALLOWED_ACTIONS:
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in _DENIED_FUNCTIONS:
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def harden(conn: sqlite3.Connection) -> sqlite3.Connection:
    """Make ``conn`` read-only for everything executed from now on."""
    try:
        conn.enable_load_extension(False)
    except AttributeError:  # Python built without extension support: nothing to disable
        pass
    conn.execute("PRAGMA query_only = ON")
    # Sorts and temporary tables stay in memory, under the heap limit, instead of spilling to disk.
    conn.execute("PRAGMA temp_store = MEMORY")
    if hasattr(conn, "setlimit"):
        conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
    conn.set_authorizer(_authorizer)
    return conn


def table_statements(conn: sqlite3.Connection, created_order: bool = False, one_line: bool = True) -> dict[str, str]:
    """Table name -> its CREATE TABLE statement on one line (SQLite's internal tables left out), by
    name or, with ``created_order``, in the order the tables were created; ``one_line`` False keeps
    the statement as written (a `--` comment in it ends at its line)."""
    order = "rowid" if created_order else "name"
    rows = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table' AND sql IS NOT NULL "
                        f"AND name NOT LIKE 'sqlite_%' ORDER BY {order}").fetchall()
    return {name: " ".join(sql.split()) if one_line else sql for name, sql in rows}


def schema_of(conn: sqlite3.Connection) -> str:
    """The database's CREATE TABLE statements joined by '; ', the form of a row's context."""
    return "; ".join(table_statements(conn).values())


# ------------------------------------------------------------------ real databases


def database_path(db_dir: str | os.PathLike, db_id: str) -> Path:
    """``db_dir/<db_id>.sqlite``, refusing any db_id that could reach a file outside ``db_dir``."""
    if (not isinstance(db_id, str) or not db_id or db_id in (".", "..") or "\x00" in db_id
            or any(sep in db_id for sep in ("/", "\\", os.sep, os.altsep or "/"))):
        raise SqltuneError(f"db_id {db_id!r} is not a plain file name; a db_id names <db_id>.sqlite "
                           "inside the database folder (no path separators or '..')")
    folder = Path(db_dir).resolve()
    path = Path(db_dir) / f"{db_id}.sqlite"
    if not path.is_file():
        raise SqltuneError(f"database file {path} for db_id {db_id!r} does not exist; "
                           "point --db-dir (evaluate.db_dir) at the folder holding <db_id>.sqlite files")
    if path.resolve().parent != folder:
        raise SqltuneError(f"database file {path} is a link to {path.resolve()}, outside {folder}; "
                           "copy the database into the folder instead of linking to it")
    return path


_LOCK_NAMES = {fcntl.F_RDLCK: "read (shared)", fcntl.F_WRLCK: "write"}
# SQLite's lock bytes (os_unix.c): PENDING, RESERVED, then the SHARED range.
_PENDING_BYTE, _RESERVED_BYTE, _SHARED_FIRST, _SHARED_SIZE = 0x40000000, 0x40000001, 0x40000002, 510


def describe_lock(path: str | os.PathLike) -> str:
    """Who holds which SQLite lock on ``path`` (POSIX advisory locks, as SQLite takes them)."""
    checks = (("an exclusive lock (a write is being committed)", _SHARED_FIRST, _SHARED_SIZE, fcntl.F_RDLCK),
              ("a pending lock (a writer waits to commit)", _PENDING_BYTE, 1, fcntl.F_RDLCK),
              ("a reserved lock (a write transaction is open)", _RESERVED_BYTE, 1, fcntl.F_WRLCK))
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return "a lock"
    try:
        for what, start, length, probe in checks:
            query = struct.pack("hh4xqqi4x", probe, os.SEEK_SET, start, length, 0)
            try:
                kind, _whence, _start, _len, pid = struct.unpack("hh4xqqi4x", fcntl.fcntl(fd, fcntl.F_GETLK, query))
            except OSError:
                continue
            if kind != fcntl.F_UNLCK:
                return f"{what}, held by process {pid}" if pid > 0 else what
    finally:
        os.close(fd)
    return "a lock"


def _read_only_uri(path: Path, **flags: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"mode": "ro", **flags}.items())
    return f"file:{quote(str(path.resolve()))}?{query}"


def _backup_to(src: sqlite3.Connection, dest: Path) -> None:
    out = sqlite3.connect(dest)
    try:
        # A read first: it takes the shared lock with the busy timeout, where backup() would retry forever.
        src.execute("SELECT count(*) FROM sqlite_master").fetchone()
        src.backup(out)
    finally:
        out.close()


def _recover_copy(path: Path, workdir: Path, dest: Path) -> None:
    """A hot rollback journal (a writer died mid-transaction) or a WAL that a read-only open can't
    replay: copy the file with its journal and WAL, let SQLite recover the copy, then snapshot that."""
    copy = workdir / "recover.sqlite"
    for suffix in ("", "-journal", "-wal"):
        if Path(f"{path}{suffix}").is_file():
            shutil.copyfile(f"{path}{suffix}", f"{copy}{suffix}")
    src = sqlite3.connect(copy)
    try:
        _backup_to(src, dest)
    finally:
        src.close()


def snapshot_database(path: str | os.PathLike, dest: str | os.PathLike, busy_timeout_s: float = 2.0) -> Path:
    """Copy the committed state of the SQLite file ``path`` to ``dest`` through SQLite's backup API.

    The source is opened read-only and never modified. Raises ``SqltuneError`` naming the file when
    it is missing, empty, not SQLite, or locked by another program (and by which lock).
    """
    path, dest = Path(path), Path(dest)
    if not path.is_file():
        raise SqltuneError(f"database file {path} does not exist; check --db-dir and the row's db_id")
    if path.stat().st_size == 0:
        raise SqltuneError(f"database file {path} is empty (0 bytes), not a SQLite database; "
                           "replace it with the real database file")
    try:
        src = sqlite3.connect(_read_only_uri(path), uri=True, timeout=busy_timeout_s)
        try:
            _backup_to(src, dest)
        finally:
            src.close()
    except sqlite3.DatabaseError as exc:
        name = getattr(exc, "sqlite_errorname", "")
        if name in ("SQLITE_BUSY", "SQLITE_LOCKED"):
            raise SqltuneError(f"database {path} is locked by another program: {describe_lock(path)}; "
                               "let it finish its transaction (or close it) and retry") from None
        if not name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN")):
            raise SqltuneError(f"{path} is not a readable SQLite database ({exc}); "
                               "check --db-dir (evaluate.db_dir) and the file") from None
        try:
            with tempfile.TemporaryDirectory(prefix="sqltune-recover-", dir=dest.parent) as work:
                _recover_copy(path, Path(work), dest)
        except sqlite3.DatabaseError as exc2:
            raise SqltuneError(f"{path} could not be read even from a copy ({exc2}); "
                               "open it with sqlite3 once to recover its journal") from None
    except OSError as exc:
        raise SqltuneError(f"could not copy {path} to {dest.parent} ({exc.strerror}); "
                           "free space there or point TMPDIR at a folder with room") from None
    return dest


def open_snapshot(path: str | os.PathLike) -> sqlite3.Connection:
    """A hardened connection to a snapshot file (immutable: nobody writes it)."""
    conn = sqlite3.connect(_read_only_uri(Path(path), immutable="1"), uri=True, check_same_thread=False)
    return harden(conn)


_SNAPSHOT_DIR: tempfile.TemporaryDirectory | None = None
_SNAPSHOTS: dict[tuple, Path] = {}


def cached_snapshot(path: str | os.PathLike) -> Path:
    """One snapshot per version of a real database file for this process's lifetime."""
    global _SNAPSHOT_DIR
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_ino, st.st_mtime_ns, st.st_size)
    if key not in _SNAPSHOTS:
        if _SNAPSHOT_DIR is None:
            try:
                _SNAPSHOT_DIR = tempfile.TemporaryDirectory(prefix="sqltune-db-")
            except OSError as exc:
                raise SqltuneError(f"could not create a temporary folder ({exc.strerror}); "
                                   "free space in it or point TMPDIR at a folder with room") from None
        _SNAPSHOTS[key] = snapshot_database(path, Path(_SNAPSHOT_DIR.name) / f"{len(_SNAPSHOTS)}.sqlite")
    return _SNAPSHOTS[key]


def open_database_copy(path: str | os.PathLike) -> sqlite3.Connection:
    """A hardened in-memory copy of the committed state of the SQLite file at ``path``."""
    with tempfile.TemporaryDirectory(prefix="sqltune-db-") as tmp:
        snap = snapshot_database(path, Path(tmp) / "copy.sqlite")
        src = sqlite3.connect(_read_only_uri(snap, immutable="1"), uri=True)
        mem = sqlite3.connect(":memory:", check_same_thread=False)
        try:
            src.backup(mem)
        finally:
            src.close()
    return harden(mem)


# ------------------------------------------------------------------------ queries


def _value_bytes(v) -> int:
    return len(v) if isinstance(v, (str, bytes)) else 8


def run_query(
    conn: sqlite3.Connection,
    sql: str,
    *,
    timeout_s: float = 2.0,
    max_rows: int = DEFAULT_MAX_ROWS,
    max_bytes: int = DEFAULT_MAX_RESULT_BYTES,
) -> QueryResult:
    """Run one statement on a hardened connection; never raises for bad SQL.

    In this process the time limit is the progress handler's; run untrusted SQL through a
    :class:`WorkerPool` for a limit that also bounds single function calls."""
    start = time.perf_counter()
    deadline = start + timeout_s
    timed_out = False

    def progress() -> int:
        nonlocal timed_out
        if time.perf_counter() > deadline:
            timed_out = True
            return 1
        return 0

    def done(**kw) -> QueryResult:
        return QueryResult(seconds=time.perf_counter() - start, **kw)

    conn.set_progress_handler(progress, 1000)
    cur = None
    try:
        cur = conn.execute(sql)
        columns = tuple(d[0] for d in cur.description or ())
        rows: list[tuple] = []
        size = 0
        while batch := cur.fetchmany(256):
            rows.extend(batch)
            if len(rows) > max_rows:
                return done(error="row_limit", message=f"more than {max_rows} rows", n_columns=len(columns))
            size += sum(_value_bytes(v) for row in batch for v in row)
            if size > max_bytes:
                return done(error="size_limit", message=f"result larger than {max_bytes // 2**20} MiB",
                            n_columns=len(columns))
        if timed_out:  # the handler fired but SQLite still returned rows: treat as timeout
            raise sqlite3.OperationalError("interrupted")
        return done(rows=rows, n_columns=len(columns), columns=columns)
    except sqlite3.Warning as exc:  # "You can only execute one statement at a time."
        return done(error="refused", message=str(exc))
    except MemoryError:
        return done(error="memory_limit", message="ran out of the query's memory budget")
    except (sqlite3.Error, ValueError, OverflowError) as exc:
        msg = str(exc)
        if timed_out:
            kind, msg = "timeout", f"ran longer than {timeout_s:g}s"
        elif getattr(exc, "sqlite_errorname", "") == "SQLITE_NOMEM" or "out of memory" in msg:
            kind, msg = "memory_limit", "ran out of the query's memory budget"
        elif any(m in msg for m in ("not authorized", "authorization denied", "one statement at a time", "readonly")):
            kind = "refused"
        else:
            kind = "error"
        return done(error=kind, message=msg)
    finally:
        if cur is not None:
            try:
                cur.close()
            except sqlite3.Error:
                pass
        conn.set_progress_handler(None, 0)


# ------------------------------------------------------------------ worker processes

PHASES = ("idle", "check", "gold", "prediction", "query")


class Guard:
    """What a task sees of its worker: deadlines the parent enforces, and checkpoints it keeps."""

    def __init__(self, deadline=None, phase=None, conn=None):
        self._deadline, self._phase, self._conn = deadline, phase, conn

    @contextmanager
    def limit(self, seconds: float, phase: str) -> Iterator[None]:
        """The parent kills this worker if the block runs past ``seconds`` (plus a margin)."""
        if self._deadline is None:
            yield
            return
        self._phase.value = PHASES.index(phase)
        self._deadline.value = time.monotonic() + seconds
        try:
            yield
        finally:
            self._deadline.value = 0.0
            self._phase.value = 0

    def checkpoint(self, obj: Any) -> None:
        """Hand the parent what the task knows so far; it builds the result from it on a kill."""
        if self._conn is not None:
            self._conn.send(("checkpoint", obj))


NO_GUARD = Guard()


@dataclass(frozen=True)
class Stop:
    """Why a task did not return: ``timeout`` (killed past its deadline) or ``died`` (the worker
    ended, e.g. out of memory), in which phase, the last checkpoint, and a message."""

    kind: str
    phase: str
    checkpoint: Any
    message: str


def _limit_memory(budget: int) -> None:
    try:
        with open("/proc/self/status") as f:
            vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
        resource.setrlimit(resource.RLIMIT_AS, (vm + budget, vm + budget))
    except (OSError, ValueError, StopIteration):  # not Linux: SQLite's heap limit still holds
        pass
    conn = sqlite3.connect(":memory:")
    conn.execute(f"PRAGMA hard_heap_limit = {min(SQLITE_HEAP_BYTES, budget // 2)}")
    conn.close()


def _resolve(name: str) -> Callable:
    module, func = name.split(":")
    return getattr(importlib.import_module(module), func)


def _worker_main(conn, deadline, phase, memory_bytes: int) -> None:
    _limit_memory(memory_bytes)
    guard = Guard(deadline, phase, conn)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        func, payload = msg
        try:
            reply = ("ok", _resolve(func)(payload, guard))
        except SqltuneError as exc:
            reply = ("sqltune_error", str(exc))
        except MemoryError:
            reply = ("died", "ran out of the worker's memory budget")
        conn.send(("done", reply))
        if reply[0] == "died":
            return  # a fresh worker is cheaper than trusting a heap that just ran out


@contextmanager
def _main_module_hidden() -> Iterator[None]:
    """Start processes without multiprocessing re-running the calling script in them: a worker
    needs only this package, and a stage script would import torch and more into every worker."""
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


class _Worker:
    def __init__(self, ctx, memory_bytes: int):
        self.deadline = ctx.Value("d", 0.0, lock=False)
        self.phase = ctx.Value("i", 0, lock=False)
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, self.deadline, self.phase, memory_bytes),
                                daemon=True)
        with _main_module_hidden():
            self.proc.start()
        child.close()
        self.task: int | None = None
        self.checkpoint: Any = None

    def peak_rss(self) -> int:
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
        except (OSError, StopIteration, ValueError):
            return 0

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join()
        self.conn.close()


class WorkerPool:
    """Processes that run tasks (``"module:function"`` taking ``(payload, guard)``) under hard
    deadlines and a memory cap. A task that overruns the deadline its guard set is killed with its
    worker; ``on_stop(payload, Stop)`` then gives its result, and a new worker takes over."""

    def __init__(self, workers: int = 1, memory_bytes: int = WORKER_MEMORY_BYTES):
        if workers < 1:
            raise SqltuneError(f"the sandbox needs at least 1 worker process (got {workers})")
        self.size, self.memory_bytes = workers, memory_bytes
        self._ctx = multiprocessing.get_context("forkserver")
        # The forkserver imports the scoring code once; workers fork from it ready to run.
        self._ctx.set_forkserver_preload(["sqltune.scoring"])
        self._workers: list[_Worker] = []
        self.peak_rss_bytes = 0
        self.kills = 0

    def _spawn(self) -> _Worker:
        try:
            return _Worker(self._ctx, self.memory_bytes)
        except OSError as exc:
            raise SqltuneError(f"could not start a sandbox worker process ({exc.strerror}); "
                               "free memory or lower evaluate.score_workers") from None

    def _retire(self, w: _Worker) -> None:
        self.peak_rss_bytes = max(self.peak_rss_bytes, w.peak_rss())
        w.kill()
        self._workers.remove(w)

    def map(self, func: str, payloads: Sequence, on_stop: Callable[[Any, Stop], Any],
            progress: Callable[[int], None] | None = None) -> list:
        """Results in the order of ``payloads``. A ``SqltuneError`` raised by a task is raised here."""
        results: list = [None] * len(payloads)
        pending = list(range(len(payloads)))[::-1]
        remaining = len(payloads)
        while len(self._workers) < min(self.size, max(1, remaining)):
            self._workers.append(self._spawn())
        try:
            while remaining:
                for w in self._workers:
                    if w.task is None and pending:
                        w.task, w.checkpoint = pending.pop(), None
                        w.deadline.value = 0.0
                        try:
                            w.conn.send((func, payloads[w.task]))
                        except (BrokenPipeError, OSError):
                            pass  # found dead below, like any worker that ends mid-task
                busy = [w for w in self._workers if w.task is not None]
                now = time.monotonic()
                deadlines = [w.deadline.value for w in busy if w.deadline.value > 0]
                wait_s = min([0.25] + [max(0.0, d + KILL_MARGIN_S - now) for d in deadlines])
                ready = set(wait([w.conn for w in busy] + [w.proc.sentinel for w in busy], wait_s))
                for w in list(busy):
                    stop = None
                    if w.conn in ready or w.proc.sentinel in ready:
                        try:
                            while w.conn.poll():
                                kind, obj = w.conn.recv()
                                if kind == "checkpoint":
                                    w.checkpoint = obj
                                    continue
                                status, value = obj
                                if status == "sqltune_error":
                                    raise SqltuneError(value)
                                if status == "ok":
                                    results[w.task] = value
                                    w.task = None
                                    break
                                stop = Stop("died", PHASES[w.phase.value], w.checkpoint, value)
                                break
                        except (EOFError, OSError):
                            pass
                        if w.task is not None and stop is None and not w.proc.is_alive():
                            stop = Stop("died", PHASES[w.phase.value], w.checkpoint,
                                        f"the worker process ended (exit code {w.proc.exitcode})")
                    d = w.deadline.value
                    if w.task is not None and stop is None and d > 0 and time.monotonic() > d + KILL_MARGIN_S:
                        stop = Stop("timeout", PHASES[w.phase.value], w.checkpoint, "")
                        self.kills += 1
                    if w.task is None:
                        remaining -= 1
                        if progress:
                            progress(1)
                    elif stop is not None:
                        results[w.task] = on_stop(payloads[w.task], stop)
                        remaining -= 1
                        if progress:
                            progress(1)
                        self._retire(w)
                        if pending:
                            self._workers.append(self._spawn())
                # workers that died while idle (e.g. after a memory error) are replaced lazily
                for w in [w for w in self._workers if w.task is None and not w.proc.is_alive()]:
                    self._retire(w)
                    if pending:
                        self._workers.append(self._spawn())
        except BaseException:
            self.close()  # a worker may still be mid-task; never leave one running
            raise
        for w in self._workers:
            self.peak_rss_bytes = max(self.peak_rss_bytes, w.peak_rss())
        return results

    def close(self) -> None:
        for w in list(self._workers):
            self._retire(w)


_POOL: WorkerPool | None = None


def shared_pool(workers: int) -> WorkerPool:
    """One pool per process and worker count, reused across calls (workers start once)."""
    global _POOL
    if _POOL is None or _POOL.size != workers:
        if _POOL is not None:
            _POOL.close()
        _POOL = WorkerPool(workers)
    return _POOL


@atexit.register
def _close_pool() -> None:
    if _POOL is not None:
        _POOL.close()


def resolve_workers(workers: int | str) -> int:
    """``auto``: every core this process may use."""
    if workers == "auto":
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:
            return max(1, os.cpu_count() or 1)
    return int(workers)


# --------------------------------------------------------------- ask's query task


def query_task(payload: dict, guard: Guard) -> QueryResult:
    """Worker task: one query on a real database opened read-only (``ask``)."""
    conn = sqlite3.connect(_read_only_uri(Path(payload["db"])), uri=True, timeout=payload["timeout_s"])
    try:
        harden(conn)
        with guard.limit(payload["timeout_s"], "query"):
            return run_query(conn, payload["sql"], timeout_s=payload["timeout_s"], max_rows=payload["max_rows"],
                             max_bytes=payload["max_bytes"])
    finally:
        conn.close()


def run_untrusted(db: str | os.PathLike, sql: str, *, timeout_s: float, max_rows: int,
                  max_bytes: int = DEFAULT_MAX_RESULT_BYTES) -> QueryResult:
    """Run ``sql`` on the real database ``db`` in a sandbox worker, bounded in time and memory."""
    if not (math.isfinite(timeout_s) and timeout_s > 0):
        raise SqltuneError(f"the time limit must be a positive number of seconds (got {timeout_s})")

    def stopped(_payload, stop: Stop) -> QueryResult:
        if stop.kind == "timeout":
            return QueryResult(error="timeout", message=f"ran longer than {timeout_s:g}s")
        return QueryResult(error="memory_limit", message=stop.message)

    payload = {"db": str(db), "sql": sql, "timeout_s": timeout_s, "max_rows": max_rows, "max_bytes": max_bytes}
    return shared_pool(1).map("sqltune.sandbox:query_task", [payload], stopped)[0]
