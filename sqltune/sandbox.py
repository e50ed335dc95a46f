"""Running untrusted SQL safely on SQLite.

Guards on every connection made here (:func:`harden`):

* an authorizer that allows only reading: SELECT, column reads, function
  calls and recursive CTEs. Everything else (ATTACH/DETACH, PRAGMA, INSERT,
  UPDATE, DELETE, CREATE, DROP, ALTER, transactions, ...) is denied, as is the
  ``load_extension()`` SQL function;
* extension loading disabled, ``PRAGMA query_only = ON``, at most 0 attached
  databases, and a 10 MB cap on any string/blob value;
* a per-query wall-clock limit enforced from a progress handler (so a
  runaway recursive CTE is interrupted), and a row cap.

Real databases are never opened for writing: :func:`open_database_copy` copies
the file to a private temporary file, loads that copy into an in-memory
database with ``conn.backup`` and deletes the temporary file.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqltune.errors import SqltuneError

ERROR_KINDS = ("timeout", "error", "refused", "row_limit")
DEFAULT_MAX_ROWS = 100_000
MAX_VALUE_BYTES = 10_000_000

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
    than the cap), ``error`` (any other SQLite error: syntax, no such column...).
    """

    rows: list[tuple] | None = None
    error: str | None = None
    message: str = ""
    n_columns: int = 0
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
    if hasattr(conn, "setlimit"):
        conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
    conn.set_authorizer(_authorizer)
    return conn


def open_database_copy(path: str | os.PathLike) -> sqlite3.Connection:
    """A hardened in-memory copy of the SQLite file at ``path``.

    The user's file is only read by a plain file copy; SQLite never opens it.
    Raises ``SqltuneError`` naming the path when it is missing or not SQLite.
    """
    path = Path(path)
    if not path.is_file():
        raise SqltuneError(f"database file {path} does not exist; check --db-dir and the row's db_id")
    with tempfile.TemporaryDirectory(prefix="sqltune-db-") as tmp:
        copy = Path(tmp) / "copy.sqlite"
        shutil.copyfile(path, copy)
        src = sqlite3.connect(f"file:{copy}?mode=ro", uri=True)
        mem = sqlite3.connect(":memory:", check_same_thread=False)
        try:
            src.backup(mem)
        except sqlite3.DatabaseError as exc:
            mem.close()
            raise SqltuneError(f"{path} is not a readable SQLite database ({exc}); fix --db-dir") from None
        finally:
            src.close()
    return harden(mem)


def run_query(
    conn: sqlite3.Connection,
    sql: str,
    *,
    timeout_s: float = 2.0,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> QueryResult:
    """Run one statement on a hardened connection; never raises for bad SQL."""
    start = time.perf_counter()
    deadline = start + timeout_s
    timed_out = False

    def progress() -> int:
        nonlocal timed_out
        if time.perf_counter() > deadline:
            timed_out = True
            return 1
        return 0

    conn.set_progress_handler(progress, 1000)
    cur = None
    try:
        cur = conn.execute(sql)
        n_columns = len(cur.description or ())
        rows = cur.fetchmany(max_rows + 1)
        if len(rows) > max_rows:
            return QueryResult(error="row_limit", message=f"more than {max_rows} rows",
                               n_columns=n_columns, seconds=time.perf_counter() - start)
        if timed_out:  # the handler fired but SQLite still returned rows: treat as timeout
            raise sqlite3.OperationalError("interrupted")
        return QueryResult(rows=rows, n_columns=n_columns, seconds=time.perf_counter() - start)
    except sqlite3.Warning as exc:  # "You can only execute one statement at a time."
        return QueryResult(error="refused", message=str(exc), seconds=time.perf_counter() - start)
    except (sqlite3.Error, ValueError, OverflowError, MemoryError) as exc:
        msg = str(exc)
        if timed_out:
            kind = "timeout"
            msg = f"ran longer than {timeout_s:g}s"
        elif any(m in msg for m in ("not authorized", "authorization denied", "one statement at a time", "readonly")):
            kind = "refused"
        else:
            kind = "error"
        return QueryResult(error=kind, message=msg, seconds=time.perf_counter() - start)
    finally:
        if cur is not None:
            try:
                cur.close()
            except sqlite3.Error:
                pass
        conn.set_progress_handler(None, 0)
