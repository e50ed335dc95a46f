"""Strict reading of params.yaml: what the YAML loader refuses (bad encoding, deep nesting, aliases,
duplicate keys, huge files) and what the models refuse (bools for numbers, inf/nan, values that only
fail later in the libraries, stray prompt placeholders). Each case calls load_params on a real file."""

import subprocess
import sys
from pathlib import Path

import pytest

from sqltune.config import MAX_FILE_BYTES, load_params
from sqltune.errors import SqltuneError
from test_bad_input import expect_clean_failure, stage

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = (ROOT / "params.yaml").read_text(encoding="utf-8")


def edited(*pairs: tuple[str, str]) -> str:
    """The shipped params.yaml with each `old` text replaced by `new` (once)."""
    text = SHIPPED
    for old, new in pairs:
        assert old in text, old
        text = text.replace(old, new, 1)
    return text


def line_of(needle: str) -> int:
    """The shipped params.yaml's (1-based) line that holds ``needle`` first."""
    return next(i for i, line in enumerate(SHIPPED.splitlines(), 1) if needle in line)


L_TARGETS, L_R, L_TRAIN_SIZE = line_of("    target_modules: all-linear"), line_of("    r: 16"), line_of("  train_size: 320")
L_TRAIN, L_LORA = line_of("train:"), line_of("  lora:")


def write(tmp_path: Path, content: str | bytes) -> Path:
    f = tmp_path / "params.yaml"
    f.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return f


def refusal(tmp_path: Path, content: str | bytes) -> str:
    with pytest.raises(SqltuneError) as exc:
        load_params(write(tmp_path, content))
    return str(exc.value)


# Loads a file in a fresh interpreter limited to 1 GiB of address space; prints the seconds that
# load_params took, then its error. A file that expands in memory dies there instead of passing.
LIMITED = """
import resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
from sqltune.config import load_params
from sqltune.errors import SqltuneError
start = time.perf_counter()
try:
    load_params(sys.argv[1])
except SqltuneError as exc:
    print(f"{time.perf_counter() - start:.3f}")
    print(exc)
"""


def refusal_within_limits(tmp_path: Path, content: str) -> str:
    proc = subprocess.run([sys.executable, "-c", LIMITED, str(write(tmp_path, content))], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    seconds, _, message = proc.stdout.partition("\n")
    assert message, "load_params accepted the file"
    assert float(seconds) < 2.0, f"load_params took {seconds}s"
    return message


# ---------------------------------------------------------------- 1. encoding


@pytest.mark.parametrize("content,byte,line", [
    (edited(("hub_split: train", "hub_split: tr\u00e9in")).encode("latin-1"), None, 13),
    (SHIPPED.encode("utf-16"), 1, 1),
    (b"seed: 1\n\xff\n", 9, 2),
], ids=["latin-1", "utf-16", "stray byte"])
def test_non_utf8_file_names_the_byte(tmp_path, content, byte, line):
    byte = byte or content.index(b"\xe9") + 1
    msg = refusal(tmp_path, content)
    assert f"is not UTF-8 text (byte {byte}, line {line}); re-save it as UTF-8" in msg


def test_utf8_with_a_byte_order_mark_still_loads(tmp_path):
    assert load_params(write(tmp_path, b"\xef\xbb\xbf" + SHIPPED.encode())).seed == 42


def test_character_yaml_forbids_is_named(tmp_path):
    msg = refusal(tmp_path, edited(("seed: 42", "seed: 4\x002")))
    assert "U+0000, which YAML does not allow, at line 3; delete it" in msg


# ---------------------------------------------------------------- 2. nesting depth


@pytest.mark.parametrize("content", [
    "seed: " + "[" * 10_000,
    "seed: " + "{a: " * 10_000,
    "".join(f"{' ' * i}k{i}:\n" for i in range(40)),
], ids=["flow sequences", "flow mappings", "block mappings"])
def test_deep_nesting_is_refused_fast_and_small(tmp_path, content):
    msg = refusal_within_limits(tmp_path, content)
    assert "nested more than 32 levels deep" in msg and "close the brackets or fix the indentation" in msg


# ---------------------------------------------------------------- 3. aliases and file size

LAUGHS = "\n".join(
    ['lol0: &lol0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    + [f"lol{i}: &lol{i} [{', '.join([f'*lol{i - 1}'] * 10)}]" for i in range(1, 10)]
) + "\n"


@pytest.mark.parametrize("content,needle", [
    (LAUGHS + SHIPPED.replace("seed: 42", "seed: *lol9"), "line 1, column 7: YAML anchors and aliases (&lol0, *lol0)"),
    (SHIPPED.replace("    target_modules: all-linear", "    target_modules: *lol9") + LAUGHS,
     f"line {L_TARGETS}, column 21: YAML anchors and aliases (&lol9, *lol9)"),
], ids=["anchors first", "alias first"])
def test_billion_laughs_is_refused_fast_and_small(tmp_path, content, needle):
    msg = refusal_within_limits(tmp_path, content)
    assert needle in msg and "are not allowed in params; write the value out in full" in msg


@pytest.mark.parametrize("change,needle", [
    (("seed: 42", "seed: &s 42"), "line 3, column 7: YAML anchors and aliases (&s, *s)"),
    (("  train_size: 320", "  train_size: *n"), f"line {L_TRAIN_SIZE}, column 15: YAML anchors and aliases (&n, *n)"),
    (("  source: auto", "  <<: {source: auto}"), "line 7, column 3: merge keys (<<) are not allowed"),
], ids=["anchor", "alias", "merge key"])
def test_anchors_aliases_and_merge_keys_are_refused(tmp_path, change, needle):
    assert needle in refusal(tmp_path, edited(change))


def test_oversized_file_is_refused_before_parsing(tmp_path):
    content = SHIPPED + "# padding\n" * (3 * MAX_FILE_BYTES // 10)
    msg = refusal(tmp_path, content)
    assert f"is larger than {MAX_FILE_BYTES // 1024} KiB" in msg and "copy one from presets/" in msg
    assert load_params(write(tmp_path, content[:MAX_FILE_BYTES])).seed == 42  # up to the bound is fine


# ---------------------------------------------------------------- 4. duplicate keys


@pytest.mark.parametrize("change,needle", [
    (("seed: 42\n", "seed: 42\nseed: 7\n"), "line 4, column 1: duplicate key seed (first at line 3)"),
    (("    r: 16\n", "    r: 16\n    r: 8\n"), f"line {L_R + 1}, column 5: duplicate key train.lora.r (first at line {L_R})"),
    (("  name: smollm2-135m-instruct ", "  name: smollm2-135m-instruct\n  name: other "),
     "line 7, column 3: duplicate key model.name (first at line 6)"),
    (("  target_modules: all-linear", "  target_modules: [{q: 1, q: 2}]"),
     f"line {L_TARGETS}, column 29: duplicate key train.lora.target_modules.0.q (first at line {L_TARGETS})"),
    (("train:\n", "train:\n  lora: {r: 1}\n"), f"line {L_LORA + 1}, column 3: duplicate key train.lora (first at line {L_TRAIN + 1})"),
], ids=["top level", "train.lora.r", "model.name", "inside a list, one line", "section"])
def test_duplicate_key_at_any_depth_is_named_with_its_lines(tmp_path, change, needle):
    msg = refusal(tmp_path, edited(change))
    assert needle in msg and "keep only one of them" in msg


# ---------------------------------------------------------------- 5. strict types


@pytest.mark.parametrize("change,needle", [
    (("train_size: 320", "train_size: true"), "prepare.train_size: must be a whole number such as 8 (unquoted, "
                                              "no fraction) (got True)"),
    (("epochs: 2", "epochs: true"), "train.trainer.epochs: must be a number such as 0.001 (unquoted) (got True)"),
    (("epochs: 2", "epochs: .inf"), "train.trainer.epochs: must be a finite number, not .inf or .nan (got inf)"),
    (("learning_rate: 0.001", "learning_rate: .nan"), "train.trainer.learning_rate: must be a finite number"),
    (("query_timeout_s: 2.0", "query_timeout_s: -.inf"), "evaluate.query_timeout_s: must be a finite number"),
    (("train_size: 320", "train_size: 32.5"), "prepare.train_size: must be a whole number such as 8 (unquoted, "
                                              "no fraction) (got 32.5)"),
    (("    r: 16", '    r: "16"'), "train.lora.r: must be a whole number such as 8 (unquoted, no fraction) "
                                   "(got '16')"),
    (("packing: true", "packing: 1"), "train.trainer.packing: must be true or false (got 1)"),
    (("use_liger_kernel: auto", "use_liger_kernel: 1"), "train.trainer.use_liger_kernel: must be true, false or "
                                                        "'auto' (got 1)"),
    (("hub_split: train", "hub_split: 2024"), "prepare.hub_split: must be text (quote a value"),
], ids=["bool for int", "bool for float", "inf", "nan", "-inf", "fraction for int", "quoted int",
        "int for bool", "int for bool or auto", "int for text"])
def test_values_keep_their_types(tmp_path, change, needle):
    assert needle in refusal(tmp_path, edited(change))


def test_an_int_still_stands_for_a_float(tmp_path):
    p = load_params(write(tmp_path, edited(("epochs: 2", "epochs: 3"), ("max_grad_norm: 1.0", "max_grad_norm: 2"))))
    assert (p.train.trainer.epochs, p.train.trainer.max_grad_norm) == (3.0, 2.0)
    assert isinstance(p.train.trainer.epochs, float)


@pytest.mark.parametrize("value,kind", [("!!int 0xZZ", "int"), ("2001-13-45", "timestamp"),
                                        ("9" * 5000, "int"), ("!!float abc", "float")],
                         ids=["bad tagged int", "impossible date", "5000-digit int", "bad tagged float"])
def test_unconstructible_scalar_is_named_not_a_traceback(tmp_path, value, kind):
    msg = refusal(tmp_path, edited(("seed: 42", f"seed: {value}")))
    assert "line 3, column 7: " in msg and f"is not a usable {kind}; fix the value" in msg


@pytest.mark.parametrize("path", [ROOT / "params.yaml", *sorted((ROOT / "presets").glob("*.yaml"))],
                         ids=lambda p: p.name)
def test_shipped_files_load_with_the_new_defaults(path):
    p = load_params(path)
    assert p.evaluate.score_workers == "auto"
    # hub datasets are pinned to a commit; local and embedded ones have no revision
    assert (p.prepare.revision is not None) == ("/" in p.prepare.dataset and not p.prepare.dataset.startswith("data/"))


# ---------------------------------------------------------------- 6. library ranges


@pytest.mark.parametrize("change,needle", [
    (("seed: 42", "seed: 4294967296"), "seed: Input should be less than 4294967296"),
    (("seed: 42", "seed: -1"), "seed: Input should be greater than or equal to 0"),
    (("max_length: 1024", "max_length: 2000000000"), "per_device_batch_size x max_length (2 x 2000000000) must "
                                                     "stay below 2**31 tokens"),
    (("per_device_batch_size: 2 ", "per_device_batch_size: 2097152 "), "(2097152 x 1024) must stay below 2**31"),
    (("pad_to_multiple_of: null", "pad_to_multiple_of: 2048"), "pad_to_multiple_of (2048) exceeds max_length "
                                                               "(1024); use a divisor of max_length"),
    (("epochs: 2", "epochs: 1.0e+300"), "train.trainer.epochs: Input should be less than or equal to 10000"),
], ids=["seed 2**32", "negative seed", "long batch", "wide batch", "padding past max_length", "absurd epochs"])
def test_values_the_libraries_would_refuse_later(tmp_path, change, needle):
    assert needle in refusal(tmp_path, edited(change))


@pytest.mark.parametrize("change", [("seed: 42", "seed: 4294967295"), ("seed: 42", "seed: 0"),
                                    ("pad_to_multiple_of: null", "pad_to_multiple_of: 1024"),
                                    ("per_device_batch_size: 2 ", "per_device_batch_size: 2097151 ")],
                         ids=["largest seed", "seed 0", "pad to max_length", "largest batch"])
def test_range_edges_are_accepted(tmp_path, change):
    load_params(write(tmp_path, edited(change)))


# ---------------------------------------------------------------- 7. system_prompt placeholders

PROMPT = '  system_prompt: "You are a text-to-SQL assistant. Answer the user\'s question with one SQLite query ' \
         'over these tables, and nothing else.\\n\\n{context}"'


@pytest.mark.parametrize("prompt,needle", [
    ("{context} {question}", "{question} is not a placeholder here, only {context}"),
    ("{0} {context}", "{0} is not a placeholder here"),
    ("{} {context}", "{} is not a placeholder here"),
    ("{context.x}", "{context.x} is not a placeholder here"),
    ("{context[0]}", "{context[0]} is not a placeholder here"),
    ("{context!r}", "{context!r} is not a placeholder here"),
    ("{context:>9}", "{context:>9} is not a placeholder here"),
    ("{context} {", "unbalanced brace (Single '{' encountered in format string)"),
    ("{context} }", "unbalanced brace (Single '}' encountered in format string)"),
    ("{{context}}", "system_prompt must contain the placeholder {context}"),
], ids=["other name", "positional", "auto-numbered", "attribute", "index", "conversion", "format spec",
        "lone open brace", "lone close brace", "only escaped"])
def test_system_prompt_takes_only_the_context_placeholder(tmp_path, prompt, needle):
    msg = refusal(tmp_path, edited((PROMPT, f'  system_prompt: "{prompt}"')))
    assert f"prepare.system_prompt: {needle}" in msg
    if "must contain" not in needle:
        assert "for a literal brace, double it: {{ or }}" in msg


@pytest.mark.parametrize("prompt", ["{context}", "Tables:\\n{context}\\nAgain: {context}",
                                    "Braces {{like this}} stay literal. {context}"])
def test_valid_system_prompts_format_with_the_context(tmp_path, prompt):
    p = load_params(write(tmp_path, edited((PROMPT, f'  system_prompt: "{prompt}"'))))
    assert "CREATE TABLE t (a INT)" in p.prepare.system_prompt.format(context="CREATE TABLE t (a INT)")


# ---------------------------------------------------------------- 8. new params


@pytest.mark.parametrize("value,expected", [("auto", "auto"), ("1", 1), ("256", 256)])
def test_score_workers_accepts_auto_or_1_to_256(tmp_path, value, expected):
    text = edited(("  score_workers: auto", f"  score_workers: {value}"))
    assert load_params(write(tmp_path, text)).evaluate.score_workers == expected


@pytest.mark.parametrize("value", ["0", "257", "-3", "true", "2.0", '"4"', "all"])
def test_score_workers_refuses_anything_else(tmp_path, value):
    msg = refusal(tmp_path, edited(("  score_workers: auto", f"  score_workers: {value}")))
    assert "evaluate.score_workers: must be a number of processes from 1 to 256 or 'auto'" in msg


def test_prepare_revision_pins_a_hub_revision(tmp_path):
    pinned = "  revision: null                    # hub dataset revision"
    text = edited((pinned, "  revision: v1.0  # hub dataset revision"))
    assert load_params(write(tmp_path, text)).prepare.revision == "v1.0"
    assert "prepare.revision: String should have at least 1 character" in refusal(
        tmp_path, edited((pinned, '  revision: ""  # hub dataset revision')))


# ---------------------------------------------------------------- end to end


@pytest.mark.parametrize("content,needle", [
    (b"seed: 1\n\xff\n", "params.yaml is not UTF-8 text (byte 9, line 2)"),
    (LAUGHS + SHIPPED.replace("seed: 42", "seed: *lol9"), "YAML anchors and aliases (&lol0, *lol0)"),
    (edited(("    r: 16\n", "    r: 16\n    r: 8\n")), f"duplicate key train.lora.r (first at line {L_R})"),
], ids=["not UTF-8", "billion laughs", "duplicate key"])
def test_prepare_stage_fails_cleanly(tmp_path, content, needle):
    write(tmp_path, content)
    proc = stage(tmp_path, "prepare")
    expect_clean_failure(proc, tmp_path, needle)
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
