"""Snap a query's text values to the question they were copied from.

A small model that copies a name from the question into a WHERE clause often misspells it by a letter
or two ("hubbert green" for the question's "Hubert Green"), and a misspelled value matches no row. In
questions whose values are copied (WikiSQL, sql-create-context, GeoQuery), each text value of the gold
query appears in the question. So a value that is compared in the query, that the question does not
contain, and that is close to one run of the question's words (difflib's ratio at least ``threshold``)
is replaced by that run, in the value's own letter case (all lower, all upper, or as the question
writes it). "Contains" means as whole words: a value cut inside a word ("persipal pal" for "Persipal
Palu", "bn 1-937007-44-8" for "isbn 1-937007-44-8") or copied with a space at either end
(" Southampton") is not a copy, and snaps. A value that ends in a digit may stop where the word goes
on: a number copied without its unit or suffix ("8,047" of "8,047m", "1990" of "the 1990s") is how
the gold queries write it. A value the question holds, a value with no close run, numbers and
identifiers stay as they are, so a query whose values are not copied from the question is left alone.
"""

from __future__ import annotations

import difflib
import re

import sqlglot
from sqlglot.errors import SqlglotError
from sqlglot.tokens import TokenType

from sqltune.errors import SqltuneError
from sqltune.sql import DIALECT, schema_tables

# LIKE and GLOB take patterns, whose wildcards the question never holds: they are not copied values.
_COMPARISONS = frozenset({TokenType.EQ, TokenType.NEQ, TokenType.GT, TokenType.GTE, TokenType.LT, TokenType.LTE})
_EDGE = "?.,!;:\"'`"  # punctuation that ends a run of words without being part of a value
MIN_CHARS = 4  # shorter values ("us", "m") are too often near an unrelated word to be snapped safely


def _runs(question: str, n_words: int):
    """Runs of up to two words fewer or more than the value has (a copy can split or merge words)."""
    words = question.split()
    for n in range(max(1, n_words - 2), n_words + 3):
        for i in range(len(words) - n + 1):
            run = " ".join(words[i:i + n])
            yield run
            stripped = run.strip(_EDGE)
            if stripped and stripped != run:
                yield stripped


def closest_run(value: str, question: str) -> tuple[float, str | None]:
    """The run of the question's words closest to ``value`` (case-blind), with difflib's ratio."""
    best, target = (0.0, None), value.casefold()
    for run in _runs(question, len(value.split())):
        ratio = difflib.SequenceMatcher(None, target, run.casefold(), autojunk=False).ratio()
        if ratio > best[0]:
            best = (ratio, run)
    return best


def holds(question: str, value: str) -> bool:
    """Whether ``question`` holds ``value`` as whole words (case-blind): not cut inside a word, save
    that a value ending in a digit may stop before a unit or suffix, and with no space at either end."""
    if not value or value != value.strip():
        return False
    end = "" if value[-1].isdigit() else r"(?!\w)"
    return re.search(r"(?<!\w)" + re.escape(value.casefold()) + end, question.casefold()) is not None


def _in_case_of(value: str, run: str) -> str:
    if value == value.lower():
        return run.lower()
    if value == value.upper():
        return run.upper()
    return run


def _names(context: str | None) -> frozenset[str]:
    if not context:
        return frozenset()
    try:
        tables = schema_tables(context)
    except SqltuneError:  # an unparsable context has no names to protect; the values are still values
        return frozenset()
    return frozenset(n.casefold() for t, cols in tables.items() for n in (t, *cols))


def snap_values(sql: str, question: str, context: str | None = None, threshold: float = 0.8) -> tuple[str, int]:
    """``sql`` with its misspelled copied values snapped to the question, and how many were snapped.
    A double-quoted word counts as a value only where it is compared and names no table or column of
    ``context`` (SQLite's own fallback for ``"abc"``)."""
    if not sql or not question:
        return sql, 0
    try:
        tokens = sqlglot.tokenize(sql, read=DIALECT)
    except (SqlglotError, ValueError):
        return sql, 0
    names, edits = None, []
    for prev, tok in zip(tokens, tokens[1:]):
        if prev.token_type not in _COMPARISONS or tok.token_type not in (TokenType.STRING, TokenType.IDENTIFIER):
            continue
        value, quote = tok.text, sql[tok.start]
        if quote not in "'\"" or len(value.strip()) < MIN_CHARS or holds(question, value):
            continue  # not a quoted value (a blob literal, say), too short, or copied right
        if tok.token_type is TokenType.IDENTIFIER:
            names = _names(context) if names is None else names  # read once, and only when needed
            if value.casefold() in names:
                continue
        ratio, run = closest_run(value.strip(), question)
        if run is None or ratio < threshold:
            continue
        run = _in_case_of(value.strip(), run)
        edits.append((tok.start, tok.end + 1, quote + run.replace(quote, quote * 2) + quote))
    for start, end, text in reversed(edits):
        sql = sql[:start] + text + sql[end:]
    return sql, len(edits)

