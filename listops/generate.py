#!/usr/bin/env python3
"""Fast, vectorised generator for the Long Range Arena (LRA) ListOps data set.

It draws expressions from the same distribution as the official generator
(google-research/long-range-arena, ``lra_benchmarks/data/listops.py``) and
writes ``basic_train.tsv``, ``basic_val.tsv`` and ``basic_test.tsv`` in the
format of the released archive.  The official rules, reproduced here:

* ``generate_tree(depth)`` starts at depth 1 with ``max_depth = 10``.  Below
  the maximum depth a node is an operator with probability 0.25 (``r <= 0.25``
  for ``r ~ U[0, 1)``), otherwise a leaf; at depth 10 it is always a leaf.
* A leaf is a uniform digit 0-9 and has length 1.  An operator has
  ``randint(2, 10)`` (inclusive) children, drawn recursively at ``depth + 1``,
  and an operator chosen uniformly from MIN, MAX, MED (``int(np.median)``) and
  SM (sum modulo 10).  Its length is ``2 + sum(child lengths)``.
* A tree is kept iff ``500 < length < 2000``, and only unique trees count.
* An operator with children ``c1..cn`` is serialised as ``n + 1`` opening
  parentheses, the operator token (``[MIN``, ``[MAX``, ``[MED``, ``[SM``),
  then each child followed by ``)``, then ``] )``; tokens are separated by
  single spaces, e.g. MAX(2, 9) is ``( ( ( [MAX 2 ) 9 ) ] )``.
* Each file is written the way ``csv.writer(f, delimiter='\\t')`` does: a
  ``Source<TAB>Target`` header, then ``<expression><TAB><value>`` rows, CRLF
  line ends (no field ever needs quoting).

Speed comes from growing a chunk of many trees at once, one depth level at a
time, as flat numpy arrays.  A level's nodes are stored in the order of their
parents, so the children of the level's operators are contiguous runs of the
next level; values and byte lengths are then reduced bottom-up with
``ufunc.reduceat`` and byte offsets pushed top-down with cumulative sums, and
all rows of a chunk are scattered into one byte buffer.  Trees whose length
is already known to reach 2000 stop growing; this changes nothing about the
accepted trees, which are independent rejection samples.  Digits and
operators do not affect acceptance, so they are only drawn for accepted trees.

Chunk ``i`` of seed ``s`` uses ``numpy.random.default_rng([s, i])``, so the
output depends only on the seed, not on how many worker processes built the
chunks.  Usage::

    python listops/generate.py --output_dir DIR [--train N] [--valid N]
        [--test N] [--seed S] [--workers W]
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import multiprocessing
import os
import sys
from pathlib import Path
import time
from typing import Iterator, NamedTuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, from anywhere
from utils import OneLineParser, integer_at_least, run_generator  # noqa: E402  (no JAX import)

MAX_DEPTH = 10  # nodes at this depth are always leaves
MIN_ARGS, MAX_ARGS = 2, 10  # children per operator, inclusive
MIN_LEN, MAX_LEN = 500, 2000  # a tree is kept iff MIN_LEN < length < MAX_LEN
OPS = ("[MIN", "[MAX", "[MED", "[SM")  # operator code -> token
SPLITS = (("train", "basic_train.tsv"), ("valid", "basic_val.tsv"), ("test", "basic_test.tsv"))
HEADER = b"Source\tTarget\r\n"

# Trees drawn per chunk.  About 8.3% are kept, so a chunk yields ~2700 rows
# (~18 MB) and its largest level arrays hold ~1.5M nodes.  Changing it changes
# the output for a given seed.
CHUNK_TREES = 1 << 15

_MIN, _MAX, _MED, _SM = range(4)
_OP_BYTES = np.array([list(op.ljust(4).encode()) for op in OPS], np.uint8)  # (4, 4)
_OP_WIDTH = np.array([len(op) for op in OPS], np.int64)  # (4,) bytes of each token
_SPACE, _TAB, _CR, _LF = (ord(c) for c in " \t\r\n")
_OPEN, _CLOSE, _END, _ZERO = (ord(c) for c in "()]0")


class Chunk(NamedTuple):
    """The accepted rows of one chunk, serialised back to back."""

    buf: np.ndarray  # (B,) uint8: rows b"<expression>\t<value>\r\n"
    row_start: np.ndarray  # (R + 1,) int64: byte offset of each row, then B
    length: np.ndarray  # (R,) int64: official token length of each tree
    drawn: int  # trees drawn for the chunk, kept or not


# --------------------------------------------------------------------------
# Tree shapes


def _grow(rng: np.random.Generator, n_trees: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Draw the shapes of ``n_trees`` i.i.d. trees and keep the accepted ones.

    Returns ``kids`` and ``length``: ``kids[d]`` (M_d,) holds the child count
    (0 for a leaf) of every node at depth ``d + 1`` of the accepted trees, in
    tree order and, below the roots, in the order of their parents;
    ``length`` (R,) is each accepted tree's official length.
    """
    tree = np.arange(n_trees)  # (M,) tree of each node at the current depth
    tokens = np.zeros(n_trees, np.int64)  # (T,) length of the nodes typed so far
    alive = np.ones(n_trees, bool)  # (T,) length may still be below MAX_LEN
    trees, kids = [], []
    for depth in range(1, MAX_DEPTH + 1):
        nkids = np.zeros(tree.size, np.int64)  # (M,)
        if depth < MAX_DEPTH:
            # P(op) = 1/4 exactly, as P(r <= 0.25) officially; uint8 draws are
            # several times faster than floats.
            is_op = rng.integers(0, 4, tree.size, dtype=np.uint8) == 0  # (M,)
            nkids[is_op] = rng.integers(MIN_ARGS, MAX_ARGS + 1, int(is_op.sum()))
        # A leaf adds 1 token, an operator 2 (its token and "]").
        tokens += np.bincount(tree, minlength=n_trees)
        tokens += np.bincount(tree[nkids > 0], minlength=n_trees)
        child_tree = np.repeat(tree, nkids)  # (C,) children, grouped by parent
        # Every pending child adds at least one more token.
        alive &= tokens + np.bincount(child_tree, minlength=n_trees) < MAX_LEN
        trees.append(tree)
        kids.append(nkids)
        tree = child_tree[alive[child_tree]]
    # Trees alive after the last level are complete, so tokens is exact.
    accepted = alive & (tokens > MIN_LEN)  # (T,)
    # Dropping whole trees keeps every kept operator's children contiguous.
    kept = [nkids[accepted[tree]] for tree, nkids in zip(trees, kids)]
    return kept, tokens[accepted]


def _draw_symbols(rng: np.random.Generator, kids: list[np.ndarray]) -> list[np.ndarray]:
    """Per level (M_d,) uint8: the digit of each leaf, the operator code of each operator."""
    syms = []
    for nkids in kids:
        is_op = nkids > 0
        sym = np.empty(nkids.size, np.uint8)
        sym[~is_op] = rng.integers(0, 10, int(nkids.size - is_op.sum()), dtype=np.uint8)
        sym[is_op] = rng.integers(0, len(OPS), int(is_op.sum()), dtype=np.uint8)
        syms.append(sym)
    return syms


# --------------------------------------------------------------------------
# Values and serialisation


def _first_child(n: np.ndarray) -> np.ndarray:
    """(G,) index of each operator's first child in the next level, given (G,) child counts."""
    return np.cumsum(n) - n


def _int_median(child_val: np.ndarray, n: np.ndarray, is_med: np.ndarray) -> np.ndarray:
    """``int(np.median(children))`` of the operators selected by ``is_med``.

    Children are digits, so a (G, 10) histogram per operator finds the two
    middle order statistics; their mean truncated is their floor-average.
    """
    n_med = n[is_med]  # (G,)
    group = np.repeat(np.arange(n_med.size), n_med)  # (Cm,) operator of each child
    digits = child_val[np.repeat(is_med, n)]  # (Cm,)
    hist = np.bincount(group * 10 + digits, minlength=10 * n_med.size).reshape(-1, 10)
    at_most = np.cumsum(hist, axis=1)  # (G, 10) children <= digit
    # The k-th smallest (0-based) child equals the number of digits v with
    # at_most[v] <= k.
    low = (at_most <= ((n_med - 1) // 2)[:, None]).sum(axis=1)
    high = (at_most <= (n_med // 2)[:, None]).sum(axis=1)
    return ((low + high) // 2).astype(np.uint8)


def _apply_ops(op: np.ndarray, n: np.ndarray, child_val: np.ndarray) -> np.ndarray:
    """(G,) uint8 value of operators with codes op (G,) over their contiguous children."""
    first = _first_child(n)
    value = np.where(
        op == _MIN,
        np.minimum.reduceat(child_val, first),
        np.where(
            op == _MAX,
            np.maximum.reduceat(child_val, first),
            np.add.reduceat(child_val, first) % 10,  # at most 10 * 9, fits uint8
        ),
    )
    is_med = op == _MED
    if is_med.any():
        value[is_med] = _int_median(child_val, n, is_med)
    return value.astype(np.uint8)


def _evaluate(kids: list[np.ndarray], syms: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Bottom-up per level: (M_d,) uint8 node values and (M_d,) int64 serialised byte lengths.

    A leaf is 1 byte.  An operator with n children is "( " * (n + 1), its token
    and a space, each child followed by " ) ", then "] )":
    5 n + width + 6 + sum(child bytes).
    """
    values: list[np.ndarray] = [np.empty(0, np.uint8)] * len(kids)
    nbytes: list[np.ndarray] = [np.empty(0, np.int64)] * len(kids)
    for d in reversed(range(len(kids))):
        is_op = kids[d] > 0
        value = syms[d].copy()  # leaves keep their digit
        size = np.ones(kids[d].size, np.int64)
        if is_op.any():
            n, op = kids[d][is_op], syms[d][is_op]  # (G,)
            value[is_op] = _apply_ops(op, n, values[d + 1])
            child_bytes = np.add.reduceat(nbytes[d + 1], _first_child(n))
            size[is_op] = 5 * n + _OP_WIDTH[op] + 6 + child_bytes
        values[d], nbytes[d] = value, size
    return values, nbytes


def _write_operators(buf: np.ndarray, start: np.ndarray, n: np.ndarray, op: np.ndarray, size: np.ndarray) -> None:
    """Write each operator's own bytes: "( " * (n + 1), its token, and the final "] )"."""
    opens = n + 1  # (G,)
    rank = np.arange(opens.sum()) - np.repeat(np.cumsum(opens) - opens, opens)
    buf[np.repeat(start, opens) + 2 * rank] = _OPEN
    token = start + 2 * opens  # (G,)
    # "[SM" is padded with the space that follows it anyway.
    buf[token[:, None] + np.arange(4)] = _OP_BYTES[op]
    buf[start + size - 3] = _END
    buf[start + size - 1] = _CLOSE


def _child_starts(start: np.ndarray, n: np.ndarray, op: np.ndarray, child_bytes: np.ndarray) -> np.ndarray:
    """(C,) byte offsets of the children of operators at offsets start (G,).

    The first child follows the operator token and its space; each later one
    follows its previous sibling and " ) ".
    """
    step = child_bytes + 3  # (C,)
    before = np.cumsum(step) - step  # (C,) bytes of earlier children in the level
    first = start + 2 * (n + 1) + _OP_WIDTH[op] + 1  # (G,)
    return np.repeat(first - before[_first_child(n)], n) + before


def _render(kids: list[np.ndarray], syms: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Serialise trees given level by level; returns (B,) uint8 rows and (R + 1,) row offsets."""
    values, nbytes = _evaluate(kids, syms)
    row_start = np.zeros(kids[0].size + 1, np.int64)
    np.cumsum(nbytes[0] + 4, out=row_start[1:])  # + tab, value, CR, LF
    buf = np.full(int(row_start[-1]), _SPACE, np.uint8)
    tail = row_start[:-1] + nbytes[0]  # (R,) end of each expression
    buf[tail], buf[tail + 1], buf[tail + 2], buf[tail + 3] = _TAB, _ZERO + values[0], _CR, _LF

    start = row_start[:-1]  # (M_d,) byte offset of each node at the current depth
    for d in range(len(kids)):
        is_op = kids[d] > 0
        leaf = ~is_op
        buf[start[leaf]] = _ZERO + syms[d][leaf]
        if d > 0:
            buf[start + nbytes[d] + 1] = _CLOSE  # the ")" after every child
        if not is_op.any():
            break  # nothing deeper
        n, op = kids[d][is_op], syms[d][is_op]
        _write_operators(buf, start[is_op], n, op, nbytes[d][is_op])
        start = _child_starts(start[is_op], n, op, nbytes[d + 1])
    return buf, row_start


def _make_chunk(seed: int, index: int) -> Chunk:
    """Chunk ``index`` of ``seed``: draw CHUNK_TREES trees and serialise the accepted ones."""
    rng = np.random.default_rng([seed, index])
    kids, length = _grow(rng, CHUNK_TREES)
    buf, row_start = _render(kids, _draw_symbols(rng, kids))
    return Chunk(buf, row_start, length, CHUNK_TREES)


# --------------------------------------------------------------------------
# Chunk streams, uniqueness


def _default_workers(count: int) -> int:
    """Processes to use: one for small requests, as a pool costs ~0.5 s to start
    and a chunk yields ~2700 rows in ~0.6 s."""
    if count <= 3 * 2700:
        return 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cpus, 4))


def _chunks(seed: int, workers: int) -> Iterator[Chunk]:
    """Chunks 0, 1, 2, ... of ``seed`` in order, built by ``workers`` processes."""
    if workers <= 1:
        yield from map(_make_chunk, itertools.repeat(seed), itertools.count())
        return  # not reached: the stream is endless
    # "spawn" rather than fork: callers may have started threads (e.g. JAX).
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        # Keep a bounded number of chunks in flight; Pool.imap would consume
        # the endless index stream eagerly.
        index = itertools.count()
        pending = collections.deque(pool.apply_async(_make_chunk, (seed, next(index))) for _ in range(workers + 1))
        while True:
            chunk = pending.popleft().get()
            pending.append(pool.apply_async(_make_chunk, (seed, next(index))))
            yield chunk


def _unique_rows(count: int, seed: int, workers: int | None) -> Iterator[tuple[Chunk, list[int]]]:
    """Per chunk, the indices of its rows that are new, until ``count`` rows in all.

    Expressions are compared by a 128-bit BLAKE2b digest rather than kept
    whole (100k rows are ~660 MB); a false match is astronomically unlikely.
    """
    if count <= 0:
        return
    seen: set[bytes] = set()
    stream = _chunks(seed, _default_workers(count) if workers is None else workers)
    try:
        for chunk in stream:
            view = memoryview(chunk.buf)
            rows = []
            for r in range(chunk.length.size):
                start, stop = chunk.row_start[r], chunk.row_start[r + 1] - 4
                digest = hashlib.blake2b(view[start:stop], digest_size=16).digest()
                if digest not in seen:
                    seen.add(digest)
                    rows.append(r)
                    if len(seen) == count:
                        break
            yield chunk, rows
            if len(seen) == count:
                return
    finally:
        stream.close()  # stops the worker pool, if any


def _check_args(counts: dict[str, int], seed: int) -> None:
    for name, value in counts.items():
        if not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


# --------------------------------------------------------------------------
# Public API


def generate(count: int, seed: int = 0, workers: int | None = None) -> list[tuple[str, int]]:
    """``count`` unique (expression, value) pairs, in an order fixed by ``seed``.

    ``generate(n, s)`` is a prefix of ``generate(m, s)`` for ``n < m``.
    ``workers`` (default: automatic) only changes speed, never the result.
    """
    _check_args({"count": count}, seed)
    pairs = []
    for chunk, rows in _unique_rows(count, seed, workers):
        for r in rows:
            stop = int(chunk.row_start[r + 1])
            expr = chunk.buf[chunk.row_start[r] : stop - 4].tobytes().decode("ascii")
            pairs.append((expr, int(chunk.buf[stop - 3]) - _ZERO))
    return pairs


def write_dataset(
    output_dir: str | os.PathLike,
    train: int = 96000,
    valid: int = 2000,
    test: int = 2000,
    seed: int = 0,
    verbose: bool = True,
    workers: int | None = None,
) -> None:
    """Write basic_{train,val,test}.tsv into ``output_dir`` (created if needed).

    The splits are consecutive slices of ``generate(train + valid + test,
    seed)``, so no expression is in two of them.  Each file is written to a
    temporary name in ``output_dir`` and moved into place once complete.
    """
    counts = {"train": train, "valid": valid, "test": test}
    _check_args(counts, seed)
    os.makedirs(output_dir, exist_ok=True)
    total = sum(counts.values())
    begin = time.monotonic()
    paths = [os.path.join(output_dir, name) for _, name in SPLITS]
    temps = [os.path.join(output_dir, f".{name}.{os.getpid()}.tmp") for _, name in SPLITS]
    # Row k of the full list goes to the split whose range holds k.
    bounds = np.cumsum([counts[key] for key, _ in SPLITS])  # (3,)
    files = []
    try:
        for temp in temps:
            files.append(open(temp, "wb"))
            files[-1].write(HEADER)
        written, drawn, length_sum, labels = 0, 0, 0, np.zeros(10, np.int64)
        last_report = begin
        for chunk, rows in _unique_rows(total, seed, workers):
            view = memoryview(chunk.buf)
            for r in rows:
                start, stop = chunk.row_start[r], chunk.row_start[r + 1]
                files[int(np.searchsorted(bounds, written, side="right"))].write(view[start:stop])
                written += 1
                length_sum += int(chunk.length[r])
                labels[chunk.buf[stop - 3] - _ZERO] += 1
            drawn += chunk.drawn
            if verbose and (time.monotonic() - last_report >= 1.0 or written == total):
                last_report = time.monotonic()
                print(
                    f"accepted {written}/{total} unique trees of {drawn} drawn "
                    f"({written / drawn:.1%}), {last_report - begin:.1f} s",
                    flush=True,
                )
        for file in files:
            file.close()
        for temp, path in zip(temps, paths):
            os.replace(temp, path)
    except BaseException:
        for file in files:
            file.close()
        for temp in temps:
            if os.path.exists(temp):
                os.remove(temp)
        raise
    if verbose:
        shares = " ".join(f"{v}:{c / max(written, 1):.3f}" for v, c in enumerate(labels))
        print(
            f"wrote {train}/{valid}/{test} rows (train/val/test) to {output_dir}; "
            f"mean length {length_sum / max(written, 1):.1f} tokens; "
            f"label shares {shares}; {time.monotonic() - begin:.1f} s",
            flush=True,
        )


# --------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(description="Generate the LRA ListOps TSV files (basic_{train,val,test}.tsv).")
    parser.add_argument("--output_dir", metavar="DIR", required=True,
                        help="directory for the three files (required)")
    parser.add_argument("--train", metavar="INT", type=integer_at_least(0), default=96000,
                        help="training rows (default: %(default)s)")
    parser.add_argument("--valid", metavar="INT", type=integer_at_least(0), default=2000,
                        help="validation rows (default: %(default)s)")
    parser.add_argument("--test", metavar="INT", type=integer_at_least(0), default=2000,
                        help="test rows (default: %(default)s)")
    parser.add_argument("--seed", metavar="INT", type=integer_at_least(0), default=0,
                        help="random seed; the same seed gives the same files (default: %(default)s)")
    parser.add_argument("--workers", metavar="INT", type=integer_at_least(0), default=None,
                        help="processes; 0 or 1: in this process (default: 1 for small sets, else up to 4)")
    args = parser.parse_args(argv)
    return run_generator(parser.prog, lambda: write_dataset(args.output_dir, args.train, args.valid, args.test,
                                                            args.seed, True, args.workers))


if __name__ == "__main__":
    sys.exit(main())
