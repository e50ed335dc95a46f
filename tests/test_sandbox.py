"""Sandbox: refusals, timeouts, row cap, real-DB copies never touch the file."""

from __future__ import annotations

import hashlib
import sqlite3
import time

import pytest

from sqltune.errors import SqltuneError
from sqltune.sandbox import harden, open_database_copy, run_query

BOMB = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT count(*) FROM c"


@pytest.fixture
def conn():
    c = sqlite3.connect(":memory:")
    c.execute("CREATE TABLE t (x INTEGER, s TEXT)")
    c.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"v{i}") for i in range(5)])
    c.commit()
    harden(c)
    yield c
    c.close()


@pytest.fixture
def dbfile(tmp_path):
    path = tmp_path / "user.sqlite"
    c = sqlite3.connect(path)
    c.execute("CREATE TABLE t (x INTEGER, s TEXT)")
    c.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"v{i}") for i in range(5)])
    c.commit()
    c.close()
    return path


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_select_works(conn):
    r = run_query(conn, "SELECT x FROM t WHERE x > 2 ORDER BY x")
    assert r.ok and r.rows == [(3,), (4,)] and r.n_columns == 1


def test_recursive_cte_bomb_times_out(conn):
    start = time.perf_counter()
    r = run_query(conn, BOMB, timeout_s=0.3)
    elapsed = time.perf_counter() - start
    assert r.error == "timeout"
    assert elapsed < 1.5
    # the connection is still usable afterwards
    assert run_query(conn, "SELECT count(*) FROM t").rows == [(5,)]


@pytest.mark.parametrize(
    "sql",
    [
        "ATTACH DATABASE ':memory:' AS other",
        "DETACH DATABASE main",
        "DELETE FROM t",
        "DROP TABLE t",
        "INSERT INTO t VALUES (9, 'x')",
        "UPDATE t SET x = 0",
        "CREATE TABLE z (a)",
        "CREATE TEMP TABLE z (a)",
        "PRAGMA query_only = OFF",
        "PRAGMA writable_schema = ON",
        "SELECT load_extension('evil')",
        "SELECT 1; DROP TABLE t",
        "BEGIN",
    ],
)
def test_refused(conn, sql):
    r = run_query(conn, sql)
    assert r.error == "refused", (sql, r)
    assert run_query(conn, "SELECT count(*) FROM t").rows == [(5,)]


def test_plain_errors(conn):
    assert run_query(conn, "SELECT nope FROM t").error == "error"
    assert run_query(conn, "this is prose").error == "error"


def test_row_cap(conn):
    r = run_query(conn, "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT x FROM c", max_rows=100)
    assert r.error == "row_limit"


def test_real_db_copy_leaves_file_unchanged(dbfile):
    before = _sha(dbfile)
    mtime = dbfile.stat().st_mtime_ns
    conn = open_database_copy(dbfile)
    assert run_query(conn, "SELECT count(*) FROM t").rows == [(5,)]
    for sql in ["DELETE FROM t", "DROP TABLE t", "UPDATE t SET x = 0", f"ATTACH DATABASE '{dbfile}' AS again", BOMB]:
        assert not run_query(conn, sql, timeout_s=0.2).ok
    assert run_query(conn, "SELECT count(*) FROM t").rows == [(5,)]
    conn.close()
    assert _sha(dbfile) == before
    assert dbfile.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in dbfile.parent.iterdir()) == ["user.sqlite"]  # no journal/wal left


def test_real_db_missing_file(tmp_path):
    with pytest.raises(SqltuneError, match="does not exist"):
        open_database_copy(tmp_path / "nope.sqlite")


def test_real_db_not_sqlite(tmp_path):
    p = tmp_path / "junk.sqlite"
    p.write_text("not a database " * 100)
    with pytest.raises(SqltuneError, match="not a readable SQLite"):
        open_database_copy(p)
