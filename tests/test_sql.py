"""SQL utilities: extraction, parsing, normalization, schema, features, read-only."""

from __future__ import annotations

import pytest

from sqltune.errors import SqltuneError
from sqltune.sql import (
    exact_match,
    extract_sql,
    features,
    is_read_only,
    normalize,
    parse,
    schema_tables,
    schema_valid,
)

CTX = "CREATE TABLE head (age INTEGER, name VARCHAR); CREATE TABLE dept (id INTEGER, head_name VARCHAR, budget REAL)"


# ------------------------------------------------------------------ extract_sql


@pytest.mark.parametrize(
    "text, expected",
    [
        ("SELECT 1", "SELECT 1"),
        ("  SELECT a FROM t;  \n", "SELECT a FROM t"),
        ("SELECT a FROM t;;", "SELECT a FROM t"),
        ("```sql\nSELECT a FROM t;\n```", "SELECT a FROM t"),
        ("Here you go:\n```\nSELECT a FROM t\n```\nHope it helps", "SELECT a FROM t"),
        ("SQL: SELECT a FROM t", "SELECT a FROM t"),
        ("sqlite: SELECT a FROM t", "SELECT a FROM t"),
        ("", ""),
        (None, ""),
        ("SELECT 1; SELECT 2;", "SELECT 1; SELECT 2"),
        ("```SELECT a FROM t```", "SELECT a FROM t"),
        ("```sqlite\nSELECT a\nFROM t\n", "SELECT a\nFROM t"),
    ],
)
def test_extract_sql(text, expected):
    assert extract_sql(text) == expected


# ------------------------------------------------------------------------ parse


def test_parse_none_for_garbage():
    assert parse("") is None
    assert parse("   ") is None
    assert parse("The answer is 42") is None
    assert parse("hello") is None  # a bare word is not a statement
    assert parse("SELECT") is None
    assert parse("SELECT 1; SELECT 2") is None
    assert parse("SELECT * FROM t WHERE") is None
    assert parse("SELECT a FROM t") is not None
    assert parse("DROP TABLE t") is not None  # parses; refused elsewhere


# -------------------------------------------------------------------- normalize


def test_normalize_keyword_case_and_whitespace():
    a = "select  name\nfrom head   where age >  3 order by name"
    b = "SELECT name FROM head WHERE age > 3 ORDER BY name"
    assert normalize(a) == normalize(b)


def test_normalize_identifier_case_and_quoting():
    assert normalize('SELECT "Name" FROM HEAD AS T1') == normalize("select name from head as t1")


def test_normalize_keeps_literal_case():
    assert normalize("SELECT a FROM t WHERE x = 'Abc'") != normalize("SELECT a FROM t WHERE x = 'abc'")


def test_normalize_quote_style_with_context():
    ctx = "CREATE TABLE t (x VARCHAR, a VARCHAR)"
    dq = 'SELECT a FROM t WHERE x = "Abc"'
    sq = "SELECT a FROM t WHERE x = 'Abc'"
    assert normalize(dq, ctx) == normalize(sq, ctx)
    assert exact_match(dq, sq, ctx)
    assert not exact_match(dq, "SELECT a FROM t WHERE x = 'abc'", ctx)


def test_normalize_double_quoted_column_stays_column():
    ctx = "CREATE TABLE t (x VARCHAR, a VARCHAR)"
    # "a" is a column of the context: an identifier, not a string
    assert normalize('SELECT a FROM t WHERE x = "a"', ctx) == normalize("SELECT a FROM t WHERE x = a", ctx)
    assert normalize('SELECT a FROM t WHERE x = "a"', ctx) != normalize("SELECT a FROM t WHERE x = 'a'", ctx)


def test_normalize_quote_style_without_context_heuristic():
    assert normalize('SELECT a FROM t WHERE x = "Abc"') == normalize("SELECT a FROM t WHERE x = 'Abc'")
    # a double-quoted name in the select list stays an identifier
    assert normalize('SELECT "a" FROM t') == normalize("SELECT a FROM t")


def test_normalize_escaped_double_quotes():
    ctx = "CREATE TABLE t (title VARCHAR, d VARCHAR)"
    a = 'SELECT d FROM t WHERE title = """Do You Believe"""'
    b = """SELECT d FROM t WHERE title = '"Do You Believe"'"""
    assert normalize(a, ctx) == normalize(b, ctx)


def test_normalize_none_on_bad_sql():
    assert normalize("not sql at all") is None
    assert not exact_match("not sql", "not sql")


def test_exact_match_neq_spelling_and_trailing_semicolon():
    assert exact_match("SELECT a FROM t WHERE b != 1;", "select a from t where b <> 1")


# ---------------------------------------------------------------------- schema


def test_schema_tables_semicolons_and_consecutive():
    assert schema_tables(CTX) == {"head": ["age", "name"], "dept": ["id", "head_name", "budget"]}
    assert schema_tables("CREATE TABLE a (x INT) CREATE TABLE B (Y VARCHAR)") == {"a": ["x"], "b": ["y"]}


def test_schema_tables_quoted_constraints_and_digit_names():
    ctx = 'CREATE TABLE "city" ( "city_name" text, "population" int DEFAULT NULL, "cc" varchar(3) NOT NULL DEFAULT \'\' );'
    assert schema_tables(ctx) == {"city": ["city_name", "population", "cc"]}
    assert schema_tables("CREATE TABLE tv (id INTEGER, 18_49_Rating VARCHAR)") == {"tv": ["id", "18_49_rating"]}


@pytest.mark.parametrize("bad", ["", "hello world", "CREATE TABLE (", "SELECT 1", "CREATE TABLE t (a INT"])
def test_schema_tables_invalid(bad):
    with pytest.raises(SqltuneError, match="context"):
        schema_tables(bad)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT name FROM head",
        "SELECT * FROM head",
        "SELECT T1.* FROM head AS T1",
        "SELECT h.name FROM head AS h JOIN dept AS d ON h.name = d.head_name",
        "SELECT head.name FROM head",
        "SELECT name, age AS a FROM head ORDER BY a",
        "SELECT count(*) AS c FROM head GROUP BY name HAVING c > 1",
        "WITH older AS (SELECT name FROM head WHERE age > 50) SELECT name FROM older",
        "WITH o(n) AS (SELECT name FROM head) SELECT n FROM o",
        "SELECT s.n FROM (SELECT name AS n FROM head) AS s",
        "SELECT name FROM head WHERE age > (SELECT avg(age) FROM head)",
        "SELECT name FROM head AS h WHERE EXISTS (SELECT 1 FROM dept AS d WHERE d.head_name = h.name)",
        "SELECT name FROM head UNION SELECT head_name FROM dept ORDER BY name",
        'SELECT name FROM head WHERE name = "Smith"',  # double-quoted string
        "SELECT rowid, NAME FROM HEAD",
    ],
)
def test_schema_valid_true(sql):
    assert schema_valid(sql, CTX), sql


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT salary FROM head",
        "SELECT name FROM heads",
        "SELECT x.name FROM head AS h",
        "SELECT h.budget FROM head AS h",
        "SELECT head.name FROM head AS h JOIN dept ON 1 = 1 WHERE dept.zzz = 1",
        "WITH o(n) AS (SELECT name FROM head) SELECT name2 FROM o",
        "SELECT s.age FROM (SELECT name AS n FROM head) AS s",
        "SELECT name FROM head WHERE age > (SELECT avg(salary) FROM head)",
        "DELETE FROM head",
        "not sql",
    ],
)
def test_schema_valid_false(sql):
    assert not schema_valid(sql, CTX), sql


# -------------------------------------------------------------------- features


@pytest.mark.parametrize(
    "sql, expected",
    [
        ("SELECT name FROM head", set()),
        ("SELECT name FROM head WHERE age > 3", {"plain_where"}),
        ("SELECT count(*) FROM head WHERE age > 3", {"aggregate"}),
        ("SELECT name, count(*) FROM head GROUP BY name", {"aggregate", "group_by"}),
        ("SELECT name FROM head ORDER BY age DESC LIMIT 1", {"order_limit"}),
        ("SELECT h.name FROM head AS h JOIN dept AS d ON h.name = d.head_name", {"join"}),
        ("SELECT h.name FROM head AS h, dept AS d WHERE h.name = d.head_name", {"join"}),
        ("SELECT name FROM head WHERE age > (SELECT avg(age) FROM head)", {"nested", "aggregate"}),
        ("SELECT name FROM head UNION SELECT head_name FROM dept", {"nested"}),
        ("WITH o AS (SELECT name FROM head) SELECT name FROM o", {"nested"}),
        ("garbage", set()),
    ],
)
def test_features(sql, expected):
    assert features(sql) == expected


# ------------------------------------------------------------------- read-only


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1",
        "select a from t where b = 1",
        "WITH x AS (SELECT 1) SELECT * FROM x",
        "SELECT 1 UNION SELECT 2",
        "SELECT 1 EXCEPT SELECT 2",
        "SELECT a FROM t;",
        "SELECT a FROM t; -- trailing comment",
    ],
)
def test_is_read_only_true(sql):
    assert is_read_only(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "",
        "prose, not SQL",
        "INSERT INTO t VALUES (1)",
        "UPDATE t SET a = 1",
        "DELETE FROM t",
        "DROP TABLE t",
        "CREATE TABLE x (a INT)",
        "ATTACH DATABASE 'x.db' AS x",
        "DETACH DATABASE x",
        "PRAGMA writable_schema = 1",
        "VACUUM",
        "SELECT 1; SELECT 2",
        "SELECT 1; DROP TABLE t",
        "BEGIN",
    ],
)
def test_is_read_only_false(sql):
    assert not is_read_only(sql)
