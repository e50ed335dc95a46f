"""Use a fine-tuned model: `sqltune predict` (SQL only) and `sqltune ask` (SQL run on a real DB).

Generated SQL is untrusted. `ask` runs it only if it is one read-only statement, on the database
opened read-only and hardened (no writes, ATTACH or extensions), with a time limit and a row cap.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from sqltune.config import DEFAULT_SYSTEM_PROMPT
from sqltune.errors import SqltuneError



def load_model_dir(model_dir: str | Path):
    """Model, tokenizer and the system prompt it was trained with."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sqltune.merging import PROMPT_FILE

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise SqltuneError(f"{model_dir} is not a model folder; run `dvc repro` first or pass --model DIR")
    meta = model_dir / PROMPT_FILE
    prompt = json.loads(meta.read_text())["system_prompt"] if meta.is_file() else DEFAULT_SYSTEM_PROMPT
    return AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir), prompt


def predict_sql(model, tok, system_prompt: str, schema: str, question: str, max_new_tokens: int = 128) -> str:
    from sqltune.config import EvaluateParams
    from sqltune.data import to_messages
    from sqltune.generation import generate
    from sqltune.sql import extract_sql

    prompt = to_messages({"context": schema, "question": question, "answer": ""}, system_prompt)["prompt"]
    return extract_sql(generate(model, tok, [prompt], EvaluateParams(max_new_tokens=max_new_tokens))[0])


def open_read_only(db: str | Path) -> sqlite3.Connection:
    from sqltune.sandbox import harden

    db = Path(db)
    if not db.is_file():
        raise SqltuneError(f"database {db} not found; pass an existing SQLite file to --db")
    conn = sqlite3.connect(f"file:{db.resolve()}?mode=ro", uri=True)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise SqltuneError(f"{db} is not a readable SQLite database ({exc})") from None
    return harden(conn)


def schema_of(conn: sqlite3.Connection) -> str:
    """The CREATE TABLE statements, in the one-line form the model was trained on."""
    rows = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND sql IS NOT NULL "
                        "AND name NOT LIKE 'sqlite_%' ORDER BY name").fetchall()
    if not rows:
        raise SqltuneError("the database has no tables to ask about")
    return "; ".join(" ".join(sql.split()) for (sql,) in rows)


def check_read_only(sql: str) -> None:
    from sqltune.sql import is_read_only

    if not sql.strip():
        raise SqltuneError("the model produced no SQL for this question; rephrase it")
    if not is_read_only(sql):
        raise SqltuneError(f"refused to run the generated SQL: only a single SELECT/WITH statement may run "
                           f"(got: {sql[:200]})")


def run_read_only(conn: sqlite3.Connection, sql: str, timeout_s: float, max_rows: int):
    """(column names, rows) of a checked statement; errors and limits become SqltuneError."""
    from sqltune.sandbox import run_query

    check_read_only(sql)
    result = run_query(conn, sql, timeout_s=timeout_s, max_rows=max_rows)
    if result.error == "row_limit":
        raise SqltuneError(f"the query returns more than {max_rows} rows; raise --max-rows or ask something narrower")
    if result.error:
        raise SqltuneError(f"the generated SQL failed ({result.error}: {result.message})")
    names = [d[0] for d in conn.execute(f"SELECT * FROM ({sql}) LIMIT 0").description]
    return names, result.rows


def format_table(names: list[str], rows: list[tuple]) -> str:
    cells = [[str(v) for v in row] for row in rows]
    widths = [max([len(n)] + [len(r[i]) for r in cells]) for i, n in enumerate(names)]
    line = lambda vals: " | ".join(v.ljust(w) for v, w in zip(vals, widths))  # noqa: E731
    return "\n".join([line(names), "-+-".join("-" * w for w in widths), *map(line, cells),
                      f"({len(rows)} row{'s' * (len(rows) != 1)})"])
