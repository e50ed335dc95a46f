"""Snapping copied values to the question (sqltune.snap): what changes, and what never does."""

import pytest

from sqltune.snap import closest_run, snap_values

CTX = "CREATE TABLE t (player VARCHAR, money INTEGER, name VARCHAR)"


def test_a_misspelled_copied_value_takes_the_questions_words_in_its_own_case():
    sql, n = snap_values('SELECT MAX(money) FROM t WHERE player = "hubbert green"',
                         "What is the most money won by Hubert Green?", CTX)
    assert (sql, n) == ('SELECT MAX(money) FROM t WHERE player = "hubert green"', 1)
    sql, n = snap_values("SELECT money FROM t WHERE player = 'Tyler Hawks'", "Where did Tyler Haws play?", CTX)
    assert (sql, n) == ("SELECT money FROM t WHERE player = 'Tyler Haws'", 1)
    sql, _ = snap_values('SELECT money FROM t WHERE player = "INA NIKITINA"', "what lane did inna nikitina have?", CTX)
    assert sql == 'SELECT money FROM t WHERE player = "INNA NIKITINA"'


def test_a_value_cut_inside_a_word_or_copied_with_its_space_is_not_a_copy():
    q = "Who played in group 11 when Persipal Palu played Southampton?"
    sql, n = snap_values('SELECT player FROM t WHERE name = "persipal pal"', q, CTX)
    assert (sql, n) == ('SELECT player FROM t WHERE name = "persipal palu"', 1)
    sql, n = snap_values('SELECT player FROM t WHERE name = " Southampton"', q, CTX)
    assert (sql, n) == ('SELECT player FROM t WHERE name = "Southampton"', 1)
    # A stray space is never part of a copy, whatever stands before the word in the question.
    sql, n = snap_values('SELECT player FROM t WHERE name = "Southampton "', "Who beat Arsenal, Southampton, and when?", CTX)
    assert (sql, n) == ('SELECT player FROM t WHERE name = "Southampton"', 1)
    # A value that ends in a digit but starts inside a word is cut too.
    sql, n = snap_values('SELECT player FROM t WHERE name = "bn 1-937007-44-8"', "Who published isbn 1-937007-44-8?", CTX)
    assert (sql, n) == ('SELECT player FROM t WHERE name = "isbn 1-937007-44-8"', 1)
    # Whole words the question holds stay, punctuation and all.
    sql = 'SELECT player FROM t WHERE name = "i.c." AND player = "persipal palu"'
    assert snap_values(sql, "How many laps did I.C. Team and Persipal Palu have?", CTX) == (sql, 0)


def test_values_the_question_holds_or_nothing_near_stay_as_written():
    q = "Which player won 12 and is named Peter Hedblom?"
    for sql in ['SELECT player FROM t WHERE name = "peter hedblom"',   # in the question (case-blind)
                "SELECT player FROM t WHERE name = 'United States'",  # nothing in the question is near it
                "SELECT player FROM t WHERE name = 'Pet'",            # too short to snap safely
                "SELECT player FROM t WHERE money = 13",              # numbers are not text values
                "SELECT player FROM t WHERE name < '12 and'",         # whole words the question holds
                "SELECT player FROM t WHERE name = 'hedblom'",        # one of its words
                "SELECT player FROM t WHERE player = name",           # columns are not values
                "SELECT player FROM t WHERE name LIKE '%Peter Hedbl%'",  # patterns keep their wildcards
                "SELECT player FROM t WHERE name GLOB 'Peter Hedblo*'"]:
        assert snap_values(sql, q, CTX) == (sql, 0)


def test_a_number_copied_without_its_unit_or_suffix_stays():
    """Gold queries copy "8,047" of "8,047m" and "1990" of "the 1990s": a value that ends in a digit
    may stop where the question's word goes on."""
    for sql, q in [("SELECT player FROM t WHERE name < '8,047'", "Which is shorter than 8,047m?"),
                   ("SELECT player FROM t WHERE name = '1990'", "Who won in the 1990s?"),
                   ("SELECT player FROM t WHERE name = '$1,036'", "Which had $1,036m in sales?")]:
        assert snap_values(sql, q, CTX) == (sql, 0)


def test_a_double_quoted_column_is_never_taken_for_a_value():
    ctx = 'CREATE TABLE t ("player name" VARCHAR, "money won" INTEGER)'
    sql = 'SELECT "money won" FROM t WHERE "money won" > "player name"'
    assert snap_values(sql, "Which player name won more money than the player nam?", ctx) == (sql, 0)


def test_quotes_inside_a_snapped_value_are_escaped_and_the_query_still_parses():
    from sqltune.sql import parse

    sql, n = snap_values("SELECT money FROM t WHERE name = 'ohara''s pub'", "Money at O'Hara's pub?", CTX)
    assert n == 1 and sql == "SELECT money FROM t WHERE name = 'o''hara''s pub'" and parse(sql) is not None


def test_several_values_and_unparsable_or_empty_input():
    sql, n = snap_values('SELECT name FROM t WHERE player = "naomi owne" AND name = "ricardo walther"',
                         "Who won when Naomi Owen and Ricardo Walther won?", CTX)
    assert n == 1 and '"naomi owen"' in sql and '"ricardo walther"' in sql
    assert snap_values("", "question?", CTX) == ("", 0)
    assert snap_values("SELECT 'unterminated", "question", CTX) == ("SELECT 'unterminated", 0)


@pytest.mark.parametrize("threshold, snapped", [(0.8, 1), (0.99, 0)])
def test_the_threshold_bounds_how_far_a_value_may_be(threshold, snapped):
    ratio, run = closest_run("severeo koroduadua", "How many for Severo Koroduadua?")
    assert run == "Severo Koroduadua" and 0.8 < ratio < 0.99
    _, n = snap_values("SELECT money FROM t WHERE player = 'severeo koroduadua'",
                       "How many for Severo Koroduadua?", CTX, threshold)
    assert n == snapped
