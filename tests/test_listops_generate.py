"""Tests for listops/generate.py, the vectorised LRA ListOps generator.

Every generated row is checked against an evaluator and a serialiser written
here independently (a token stack), which are first validated on real rows of
the official generator (tests/fixtures/listops-1000, copied from the LRA samples).
"""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from listops import generate as lg  # noqa: E402

REAL_DIR = ROOT / "tests" / "fixtures" / "listops-1000"  # rows of the official generator
FILES = ("basic_train.tsv", "basic_val.tsv", "basic_test.tsv")
OPERATORS = {"[MIN", "[MAX", "[MED", "[SM"}


# --------------------------------------------------------------------------
# Independent reference: parse, evaluate, re-serialise


def parse(expression: str):
    """Nested (operator, [children]) / int tree of an expression, via a token stack.

    Also checks that each operator is preceded by exactly (children + 1) "(".
    """
    tokens = expression.split(" ")
    stack: list[tuple[str, list, int]] = []  # (operator, children, "(" seen before it)
    result = None
    opens = 0
    for token in tokens:
        if token == "(":
            opens += 1
            continue
        if token in OPERATORS:
            stack.append((token, [], opens))
        elif token == "]":
            op, children, prefix = stack.pop()
            assert prefix == len(children) + 1, (op, prefix, len(children))
            node = (op, children)
            if stack:
                stack[-1][1].append(node)
            else:
                result = node
        elif token == ")":
            pass
        else:
            assert token.isdigit() and len(token) == 1, token
            if stack:
                stack[-1][1].append(int(token))
            else:
                result = int(token)
        opens = 0
    assert not stack
    return result


def evaluate(node) -> int:
    if isinstance(node, int):
        return node
    op, children = node
    values = sorted(evaluate(child) for child in children)
    if op == "[MIN":
        return values[0]
    if op == "[MAX":
        return values[-1]
    if op == "[SM":
        return sum(values) % 10
    mid = len(values) // 2
    if len(values) % 2:
        return values[mid]
    return int((values[mid - 1] + values[mid]) / 2)


def serialize(node) -> str:
    if isinstance(node, int):
        return str(node)
    op, children = node
    parts = ["("] * (len(children) + 1) + [op]
    for child in children:
        parts += [serialize(child), ")"]
    return " ".join(parts + ["]", ")"])


def token_length(expression: str) -> int:
    return len(expression.replace("(", "").replace(")", "").split())


def read_tsv(path: Path) -> list[tuple[str, int]]:
    data = path.read_bytes()
    assert data.startswith(b"Source\tTarget\r\n")
    lines = data.split(b"\r\n")
    assert lines[-1] == b"" and b"\n" not in b"".join(lines)  # every line ends in CRLF
    rows = []
    for line in lines[1:-1]:
        source, target = line.decode("ascii").split("\t")
        rows.append((source, int(target)))
    return rows


def check_rows(rows: list[tuple[str, int]]) -> None:
    for expression, value in rows:
        tree = parse(expression)
        assert serialize(tree) == expression
        assert evaluate(tree) == value
        assert MIN_LEN < token_length(expression) < MAX_LEN


MIN_LEN, MAX_LEN = 500, 2000


# --------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def rows() -> list[tuple[str, int]]:
    return lg.generate(3000, seed=0, workers=1)


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("listops")
    lg.write_dataset(out, train=300, valid=60, test=40, seed=5, verbose=False)
    return out


# --------------------------------------------------------------------------
# The reference itself, on the official generator's rows


def test_reference_agrees_with_official_rows():
    total = 0
    for name in FILES:
        rows = read_tsv(REAL_DIR / name)
        check_rows(rows)
        total += len(rows)
    assert total == 40  # 24 + 7 + 9 rows in the fixture


def test_reference_detects_errors():
    expression = "( ( ( [MIN ( ( ( [SM 1 ) 4 ) ] ) ) 7 ) ] )"
    assert evaluate(parse(expression)) == 5
    assert evaluate(parse("( ( ( ( ( [MED 1 ) 2 ) 5 ) 8 ) ] )")) == 3
    with pytest.raises(AssertionError):
        parse("( ( [MAX 2 ) 9 ) ] )")  # one "(" missing
    with pytest.raises(AssertionError):
        check_rows([("( ( ( [MAX 2 ) 9 ) ] )", 2)])


# --------------------------------------------------------------------------
# Generated rows


def test_generated_rows_are_correct(rows):
    assert len(rows) == 3000
    check_rows(rows)
    assert len({expression for expression, _ in rows}) == len(rows)


def test_statistics_match_official(rows):
    lengths = np.array([token_length(expression) for expression, _ in rows])
    shares = np.bincount([value for _, value in rows], minlength=10) / len(rows)
    # Official: mean ~1040-1060 tokens; labels 0 and 9 ~17% each, others 8-9%.
    assert abs(lengths.mean() - 1058) <= 60
    assert 0.13 <= shares[0] <= 0.21 and 0.13 <= shares[9] <= 0.21
    assert np.all((shares[1:9] >= 0.05) & (shares[1:9] <= 0.12))
    assert lengths.min() < 560 and lengths.max() > 1900  # fills the whole range


def test_hand_built_trees_serialise():
    # Level by level: child counts (0 = leaf) and symbols (digit, or operator
    # code 0 MIN, 1 MAX, 2 MED, 3 SM).  Trees: MIN(SM(1, 4), 7); MAX(2, 9);
    # MED(1, 2, 5, 8); 6.
    kids = [np.array([2, 2, 4, 0]), np.array([2, 0, 0, 0, 0, 0, 0, 0]), np.array([0, 0])]
    syms = [np.array([0, 1, 2, 6]), np.array([3, 7, 2, 9, 1, 2, 5, 8]), np.array([1, 4])]
    buf, row_start = lg._render(kids, [s.astype(np.uint8) for s in syms])
    assert buf.tobytes() == (
        b"( ( ( [MIN ( ( ( [SM 1 ) 4 ) ] ) ) 7 ) ] )\t5\r\n"
        b"( ( ( [MAX 2 ) 9 ) ] )\t9\r\n"
        b"( ( ( ( ( [MED 1 ) 2 ) 5 ) 8 ) ] )\t3\r\n"
        b"6\t6\r\n"
    )
    assert row_start.tolist() == [0, 46, 72, 110, 115]


def test_generate_is_deterministic_and_prefix_stable(rows):
    assert lg.generate(50, seed=0, workers=1) == rows[:50]
    other = lg.generate(50, seed=1, workers=1)
    assert other != rows[:50]
    assert not {e for e, _ in other} & {e for e, _ in rows}


def test_worker_processes_do_not_change_output(rows):
    assert lg.generate(3000, seed=0, workers=2) == rows


# --------------------------------------------------------------------------
# Files


def test_files_format_and_splits(small_dataset):
    splits = [read_tsv(small_dataset / name) for name in FILES]
    assert [len(split) for split in splits] == [300, 60, 40]
    everything = [row for split in splits for row in split]
    check_rows(everything)
    assert len({expression for expression, _ in everything}) == 400
    # The splits are consecutive slices of one generated list.
    assert everything == lg.generate(400, seed=5, workers=1)
    # Byte-for-byte what csv.writer(delimiter="\t") writes.
    for name, split in zip(FILES, splits):
        text = io.StringIO(newline="")
        writer = csv.writer(text, delimiter="\t")
        writer.writerow(["Source", "Target"])
        writer.writerows(split)
        assert (small_dataset / name).read_bytes() == text.getvalue().encode("ascii")
    assert not list(small_dataset.glob(".*tmp"))  # temporary files are gone


def test_files_are_deterministic(small_dataset, tmp_path):
    lg.write_dataset(tmp_path / "same", train=300, valid=60, test=40, seed=5, verbose=False)
    lg.write_dataset(tmp_path / "other", train=300, valid=60, test=40, seed=6, verbose=False)
    for name in FILES:
        expected = (small_dataset / name).read_bytes()
        assert (tmp_path / "same" / name).read_bytes() == expected
        assert (tmp_path / "other" / name).read_bytes() != expected


def test_bad_counts_raise(tmp_path):
    with pytest.raises(ValueError):
        lg.write_dataset(tmp_path, train=-1, verbose=False)
    with pytest.raises(ValueError):
        lg.generate(10, seed=-3)


# --------------------------------------------------------------------------
# Command line


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_cli_writes_files(tmp_path):
    out = tmp_path / "cli"
    result = run_cli(
        ["listops/generate.py", "--output_dir", str(out), "--train", "20", "--valid", "5", "--test", "7", "--seed", "3"],
        ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "20/5/7" in result.stdout
    splits = [read_tsv(out / name) for name in FILES]
    assert [len(split) for split in splits] == [20, 5, 7]
    assert [row for split in splits for row in split] == lg.generate(32, seed=3, workers=1)


def test_cli_runs_from_package_directory(tmp_path):
    result = run_cli(["generate.py", "--output_dir", str(tmp_path), "--train", "3", "--valid", "1", "--test", "1"], ROOT / "listops")
    assert result.returncode == 0, result.stderr
    assert len(read_tsv(tmp_path / "basic_test.tsv")) == 1


@pytest.mark.parametrize("bad", [["--train", "-5"], ["--seed", "x"], ["--bogus", "1"], []])
def test_cli_rejects_bad_arguments(tmp_path, bad):
    args = ["listops/generate.py"] + ([] if bad == [] else ["--output_dir", str(tmp_path)] + bad)
    result = run_cli(args, ROOT)
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1 and "error" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.glob("*.tsv"))
