"""Use a fine-tuned model: `sqltune predict` (SQL only) and `sqltune ask` (SQL run on a real DB).

Generated SQL is untrusted. `ask` runs it only if it is one read-only statement, in a sandbox worker
process (sqltune.sandbox) on the database opened read-only and hardened (no writes, ATTACH or
extensions), with a hard time limit, a memory cap, a row cap and a cap on the result's bytes.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from urllib.parse import quote

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


def chat_prompt(system_prompt: str, schema: str, question: str) -> list[dict]:
    """The chat messages of a question, in the training rows' format (sqltune.data.to_messages)."""
    from sqltune.data import to_messages

    return to_messages({"context": schema, "question": question, "answer": ""}, system_prompt)["prompt"]


def prompt_tokens(tok, system_prompt: str, schema: str, question: str) -> int:
    prompt = chat_prompt(system_prompt, schema, question)
    return len(tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False))


def context_window(model) -> int | None:
    return getattr(model.config, "max_position_embeddings", None)


def check_prompt_fits(model, tok, system_prompt: str, schema: str, question: str, max_new_tokens: int) -> None:
    """A prompt past the model's context is silently cut or garbled; say so before generating."""
    window = context_window(model)
    n = prompt_tokens(tok, system_prompt, schema, question)
    if window is not None and n + max_new_tokens > window:
        raise SqltuneError(f"the prompt with this database's schema is {n} tokens; with --max-new-tokens "
                           f"{max_new_tokens} that exceeds the model's context of {window} tokens. Name the "
                           "tables the question needs with --tables t1,t2 (or lower --max-new-tokens)")


def predict_sql(model, tok, system_prompt: str, schema: str, question: str, max_new_tokens: int = 128,
                snap: bool = True) -> str:
    """The greedy query; ``snap``: its copied values snapped to the question, as evaluate scores them."""
    from sqltune.config import EvaluateParams
    from sqltune.generation import generate
    from sqltune.snap import snap_values
    from sqltune.sql import extract_sql

    prompt = chat_prompt(system_prompt, schema, question)
    sql = extract_sql(generate(model, tok, [prompt], EvaluateParams(max_new_tokens=max_new_tokens))[0])
    return snap_values(sql, question, schema)[0] if snap else sql


def decoding_settings(max_new_tokens: int, decoding: str, candidates: int, temperature: float, selection: str):
    """ask's decoding flags, checked by evaluate's rules for the same settings."""
    from sqltune.config import scoring_settings

    return scoring_settings(names={"max_new_tokens": "--max-new-tokens", "decoding": "--decoding",
                                   "num_candidates": "--candidates", "temperature": "--temperature",
                                   "selection": "--selection"},
                            max_new_tokens=max_new_tokens, decoding=decoding, num_candidates=candidates,
                            temperature=temperature, selection=selection)


def guided_sql(model, tok, system_prompt: str, schema: str, question: str, db: str | Path, e, timeout_s: float,
               snap: bool = True) -> dict:
    """Execution-guided decoding on the user's database: e.num_candidates beam or sampled queries,
    the failing and empty ones dropped, then e.selection's rule over the rest (sqltune.guided)."""
    from sqltune.generation import generate_candidates
    from sqltune.guided import select_on_database
    from sqltune.snap import snap_values
    from sqltune.sql import extract_sql

    prompt = chat_prompt(system_prompt, schema, question)
    [candidates] = generate_candidates(model, tok, [prompt], e, e.decoding)
    if snap:
        candidates = [snap_values(extract_sql(c), question, schema)[0] for c in candidates]
    return select_on_database(db, schema, candidates, timeout_s=timeout_s, rule=e.selection)


def open_read_only(db: str | Path) -> sqlite3.Connection:
    """The user's database, opened read-only and hardened; a locked or broken file is a clear error."""
    from sqltune.sandbox import describe_lock, harden

    db = Path(db)
    if not db.is_file():
        raise SqltuneError(f"database {db} not found; pass an existing SQLite file to --db")
    if db.stat().st_size == 0:
        raise SqltuneError(f"database {db} is empty (0 bytes), not a SQLite database; pass the real file to --db")
    conn = sqlite3.connect(f"file:{quote(str(db.resolve()))}?mode=ro", uri=True, timeout=2.0)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        conn.close()
        if getattr(exc, "sqlite_errorname", "") in ("SQLITE_BUSY", "SQLITE_LOCKED"):
            raise SqltuneError(f"database {db} is locked by another program: {describe_lock(db)}; let it "
                               "finish its transaction (or close it) and retry") from None
        raise SqltuneError(f"{db} is not a readable SQLite database ({exc})") from None
    return harden(conn)


def schema_of(conn: sqlite3.Connection, tables: list[str] | None = None) -> str:
    """The CREATE TABLE statements in the form of the training data (sqltune.sql.training_schema:
    no keys, REFERENCES or comments); ``tables`` keeps only those (names compare case-blind, as in
    SQLite)."""
    from sqltune.sandbox import table_statements
    from sqltune.sql import training_schema

    # as written (comments end at their line) and in the order a dump of the DDL would list them
    statements = table_statements(conn, created_order=True, one_line=False)
    if not statements:
        raise SqltuneError("the database has no tables to ask about")
    if tables:
        by_name = {name.lower(): sql for name, sql in statements.items()}
        unknown = [t for t in tables if t.lower() not in by_name]
        if unknown:
            raise SqltuneError(f"--tables names {', '.join(unknown)}, not in the database; its tables: "
                               f"{', '.join(statements)}")
        return training_schema(";\n".join(by_name[t.lower()] for t in dict.fromkeys(tables)))
    return training_schema(";\n".join(statements.values()))


def check_read_only(sql: str) -> None:
    from sqltune.sql import is_read_only

    if not sql.strip():
        raise SqltuneError("the model produced no SQL for this question; rephrase it")
    if not is_read_only(sql):
        raise SqltuneError(f"refused to run the generated SQL: only a single SELECT/WITH statement may run "
                           f"(got: {sql[:200]})")


# What `ask` may bring back to print: a table this size is already more than a terminal shows.
MAX_RESULT_BYTES = 16 * 2**20
MAX_CELL_CHARS = 200


def run_read_only(db: str | Path, sql: str, timeout_s: float, max_rows: int):
    """(column names, rows) of a checked statement, run in a sandbox worker; errors and limits
    become SqltuneError."""
    from sqltune.sandbox import run_untrusted

    check_read_only(sql)
    result = run_untrusted(db, sql, timeout_s=timeout_s, max_rows=max_rows, max_bytes=MAX_RESULT_BYTES)
    if result.error == "row_limit":
        raise SqltuneError(f"the query returns more than {max_rows} rows; raise --max-rows or ask something narrower")
    if result.error == "size_limit":
        raise SqltuneError(f"the query's result is larger than {MAX_RESULT_BYTES // 2**20} MiB; "
                           "ask for fewer or smaller columns")
    if result.error:
        raise SqltuneError(f"the generated SQL failed ({result.error}: {result.message})")
    return list(result.columns), result.rows


def _cell(v) -> str:
    if isinstance(v, bytes):
        return f"<blob, {len(v)} bytes>"
    text = str(v)
    return text if len(text) <= MAX_CELL_CHARS else text[: MAX_CELL_CHARS - 1] + "…"


def format_table(names: list[str], rows: list[tuple]) -> str:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(n)] + [len(r[i]) for r in cells]) for i, n in enumerate(names)]
    line = lambda vals: " | ".join(v.ljust(w) for v, w in zip(vals, widths))  # noqa: E731
    return "\n".join([line(names), "-+-".join("-" * w for w in widths), *map(line, cells),
                      f"({len(rows)} row{'s' * (len(rows) != 1)})"])
