"""Tests for ember/generate.py, the generated stand-in for EMBER's raw binaries.

Files are read back the way a user's loader would (gzip told by its magic bytes, not by name), and
signatures are looked for here independently: the exact motif with bytes.find, and runs of
signature-alphabet bytes.
"""
import csv
import gzip
import hashlib
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from ember import generate as eg

LENGTH = 16384  # short files keep the data-set tests fast; the layout does not depend on it
COUNT = 120
S = eg.SIGNATURE_LENGTH
MOTIF = eg.MOTIF
ALPHABET = np.zeros(256, bool)
ALPHABET[list(eg.ALPHABET)] = True


# --------------------------------------------------------------------------
# Reading back


def read(path):
    payload = path.read_bytes()
    return gzip.decompress(payload) if payload[:2] == b'\x1f\x8b' else payload


def tree(split_dir):
    """{path relative to the split, with /: raw bytes on disk} of every file below benign/ and malware/."""
    found = {}
    for name in ('benign', 'malware'):
        for root, _, files in os.walk(split_dir / name):
            for file in files:
                path = split_dir.joinpath(root, file)
                found[path.relative_to(split_dir).as_posix()] = path.read_bytes()
    return found


def rows(split_dir):
    with open(split_dir / 'signatures.csv', newline='') as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ['path', 'label', 'length', 'offset', 'gzip']
        return [{k: (v if k == 'path' else int(v)) for k, v in row.items()} for row in reader]


def motif_positions(data):
    found, at = [], data.find(MOTIF)
    while at >= 0:
        found.append(at)
        at = data.find(MOTIF, at + 1)
    return found


def alphabet_runs(data):
    """(starts, lengths) of the maximal runs of signature-alphabet bytes."""
    flags = np.concatenate([[0], ALPHABET[np.frombuffer(data, np.uint8)].astype(np.int8), [0]])
    edges = np.diff(flags)
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return starts, stops - starts


def nearest_centroid_accuracy(features, labels, n_train):
    x, y = np.asarray(features, np.float64), np.asarray(labels)
    centroids = np.stack([x[:n_train][y[:n_train] == c].mean(0) for c in (0, 1)])
    guess = np.argmin(((x[n_train:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
    return float(np.mean(guess == y[n_train:]))


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    """A small data set written by two spawned worker processes."""
    out = tmp_path_factory.mktemp('ember') / 'DATA'
    assert eg.write_dataset(out, count=COUNT, length=LENGTH, seed=7, workers=2, verbose=False) == out
    return out


# --------------------------------------------------------------------------
# Layout, balance, gzip


def test_layout_matches_the_metadata(dataset):
    assert sorted(p.name for p in dataset.iterdir()) == ['test', 'train']
    depths = set()
    for split, size in (('train', COUNT - 24), ('test', 24)):
        folder = dataset / split
        assert {p.name for p in folder.iterdir()} >= {'benign', 'malware', 'signatures.csv'}
        files, table = tree(folder), rows(folder)
        assert len(table) == size and sorted(files) == sorted(r['path'] for r in table)
        for row in table:
            parts = row['path'].split('/')
            assert parts[0] == ('malware' if row['label'] else 'benign')
            name = parts[-1]
            assert re.fullmatch(r'[0-9a-f]{64}', name), name  # no suffix, nothing about class or gzip
            assert parts[1:-1] == [name[0:2], name[2:4]][:len(parts) - 2]
            depths.add(len(parts) - 2)
            data = read(folder / row['path'])
            assert hashlib.sha256(data).hexdigest() == name
            assert len(data) == row['length'] == LENGTH
        assert not [p for p in folder.rglob('*') if p.name.endswith('.tmp')]
    assert depths == {0, 1, 2}  # files directly in the class folder and one or two folders below


def test_classes_balanced_and_gzip_by_content(dataset):
    zipped = 0
    for split in ('train', 'test'):
        table = rows(dataset / split)
        labels = [r['label'] for r in table]
        assert labels.count(0) == labels.count(1) == len(table) // 2
        for row in table:
            compressed = (dataset / split / row['path']).read_bytes()[:2] == b'\x1f\x8b'
            assert compressed == bool(row['gzip'])
            zipped += compressed
    assert 0.15 <= zipped / COUNT <= 0.35  # 25% asked


# --------------------------------------------------------------------------
# Signatures


def test_signatures_are_where_the_metadata_says_and_nowhere_else(dataset):
    mutated = []
    for split in ('train', 'test'):
        for row in rows(dataset / split):
            data = read(dataset / split / row['path'])
            starts, lengths = alphabet_runs(data)
            if row['label'] == 0:
                assert row['offset'] == -1
                assert motif_positions(data) == []
                assert lengths.max(initial=0) <= 1  # not even two signature bytes in a row
                continue
            offset = row['offset']
            assert 0 <= offset <= len(data) - S
            found = motif_positions(data)
            assert found[0] == offset and found[-1] <= offset + S - len(MOTIF), found
            # one run of signature bytes covers the signature, at most a background byte longer each side
            run = int(np.searchsorted(starts, offset, side='right')) - 1
            assert offset - 1 <= starts[run] <= offset and offset + S <= starts[run] + lengths[run] <= offset + S + 1
            assert np.sort(lengths)[-2:-1].max(initial=0) <= 1  # the only run longer than one byte
            block = np.frombuffer(data[offset:offset + S], np.uint8)
            mutated.append(np.mean(block != np.resize(np.frombuffer(MOTIF, np.uint8), S)))
    assert 0.05 < np.mean(mutated) < 0.13  # 10% redrawn from 12 bytes: 9.2% changed


def test_classes_share_the_background_outside_the_signature():
    for k in range(12):
        benign, none = eg.make_file(np.random.default_rng(k), 8192 + 1000 * k, False)
        malware, offset = eg.make_file(np.random.default_rng(k), 8192 + 1000 * k, True)
        assert none == -1 and len(benign) == len(malware) == 8192 + 1000 * k
        diff = np.flatnonzero(np.frombuffer(benign, np.uint8) != np.frombuffer(malware, np.uint8))
        assert diff.size > 0 and offset <= diff.min() and diff.max() < offset + S
        assert malware[offset:offset + len(MOTIF)] == MOTIF


def test_first_bytes_do_not_tell_the_class_but_signature_windows_do():
    n, head = 400, 256
    labels = np.arange(n) % 2
    files = [eg.make_file(np.random.default_rng([11, i]), eg.DEFAULT_LENGTH, bool(labels[i])) for i in range(n)]
    firsts = [np.frombuffer(data[:head], np.uint8) for data, _ in files]
    hists = np.sqrt(np.stack([np.bincount(x, minlength=256) for x in firsts]))  # Hellinger: sqrt of counts
    assert 0.40 <= nearest_centroid_accuracy(hists, labels, n // 2) <= 0.60
    assert 0.40 <= nearest_centroid_accuracy(np.stack(firsts), labels, n // 2) <= 0.60  # byte by position
    between = np.abs(hists[labels == 0].mean(0) - hists[labels == 1].mean(0)).sum()
    benign = hists[labels == 0]
    within = np.abs(benign[::2].mean(0) - benign[1::2].mean(0)).sum()  # half-size groups: noisier
    assert between < 1.5 * within

    rng = np.random.default_rng(0)
    windows = []
    for data, offset in files:
        start = offset + rng.integers(0, S - head + 1) if offset >= 0 else rng.integers(0, len(data) - head + 1)
        windows.append(np.sqrt(np.bincount(np.frombuffer(data[start:start + head], np.uint8), minlength=256)))
    assert nearest_centroid_accuracy(windows, labels, n // 2) >= 0.97

    # Over whole files, signature bytes are rare in the background and never two in a row, so their
    # count alone (what a pooled bag of bytes sees) separates the classes.
    counts = np.array([ALPHABET[np.frombuffer(data, np.uint8)].sum() for data, _ in files])
    assert counts[labels == 0].max() < S <= counts[labels == 1].min()
    assert max(alphabet_runs(data)[1].max(initial=0) for data, _ in files[0::2]) <= 1


def test_accuracy_bound():
    L, positions = eg.DEFAULT_LENGTH, eg.DEFAULT_LENGTH - S + 1
    for T in (0, 1, 256, 2 ** 14, 2 ** 16, positions, L, 2 * L):
        assert eg.accuracy_bound(T) == pytest.approx(0.5 + 0.5 * min(T, positions) / positions)
        full = max(0, min(T - S + 1, positions))
        assert eg.accuracy_bound(T, whole_signature=True) == pytest.approx(0.5 + 0.5 * full / positions)
    assert eg.accuracy_bound(2 ** 16) == pytest.approx(0.75092, abs=1e-5)
    lo, hi, T = 4096, 6000, 3000
    brute = np.mean([0.5 + 0.5 * min(T, n - S + 1) / (n - S + 1) for n in range(lo, hi + 1)])
    assert eg.accuracy_bound(T, hi, lo) == pytest.approx(brute)
    # the offsets behind the bound are uniform over the file
    offsets = np.array([eg.make_file(np.random.default_rng([3, i]), 4096, True)[1] for i in range(400)])
    share = np.mean(offsets < T)
    assert share == pytest.approx(min(T, 4096 - S + 1) / (4096 - S + 1), abs=0.07)
    assert 0 <= offsets.min() and offsets.max() <= 4096 - S


def test_varied_lengths_keep_signatures_inside(tmp_path):
    out = eg.write_dataset(tmp_path, count=40, length=6000, min_length=4096, seed=1, workers=0, verbose=False)
    lengths = []
    for split in ('train', 'test'):
        for row in rows(out / split):
            data = read(out / split / row['path'])
            assert len(data) == row['length'] and 4096 <= row['length'] <= 6000
            lengths.append(row['length'])
            if row['label']:
                assert row['offset'] + S <= row['length'] and data.find(MOTIF) == row['offset']
    assert len(set(lengths)) > 30


# --------------------------------------------------------------------------
# Determinism, crash safety


def test_same_seed_same_bytes_whatever_the_workers(dataset, tmp_path):
    again = eg.write_dataset(tmp_path / 'again', count=COUNT, length=LENGTH, seed=7, workers=0, verbose=False)
    other = eg.write_dataset(tmp_path / 'other', count=COUNT, length=LENGTH, seed=8, workers=0, verbose=False)
    for split in ('train', 'test'):
        assert tree(again / split) == tree(dataset / split)
        assert (again / split / 'signatures.csv').read_bytes() == (dataset / split / 'signatures.csv').read_bytes()
        assert not set(tree(other / split)) & set(tree(dataset / split))


def test_rerun_finishes_an_interrupted_run_and_refuses_foreign_folders(tmp_path, capsys):
    out = tmp_path / 'DATA'
    eg.write_dataset(out, count=10, length=4096, seed=2, workers=0, verbose=True)
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith('wrote 10 files')
    before = {split: tree(out / split) for split in ('train', 'test')}
    (out / 'test' / 'signatures.csv').unlink()  # as if interrupted
    victim = out / 'train' / sorted(before['train'])[0]
    victim.unlink()
    stale = out / 'train' / 'malware' / '.abc.123.tmp'
    stale.write_bytes(b'partial')
    eg.write_dataset(out, count=10, length=4096, seed=2, workers=0, verbose=False)
    assert {split: tree(out / split) for split in ('train', 'test')} == before
    assert (out / 'test' / 'signatures.csv').exists() and not stale.exists()
    with pytest.raises(ValueError, match='already holds files'):
        eg.write_dataset(out, count=10, length=4096, seed=3, workers=0, verbose=False)
    foreign = tmp_path / 'foreign'
    (foreign / 'test' / 'benign').mkdir(parents=True)
    (foreign / 'test' / 'benign' / 'real.exe').write_bytes(b'MZ')
    with pytest.raises(ValueError, match='already holds files'):
        eg.write_dataset(foreign, count=4, length=4096, workers=0, verbose=False)
    assert (foreign / 'test' / 'benign' / 'real.exe').read_bytes() == b'MZ'
    assert not (foreign / 'train').exists()  # nothing written before the refusal


def test_a_failed_run_leaves_no_metadata_and_no_temporary_files(tmp_path, monkeypatch):
    real, calls = eg.make_file, []

    def failing(rng, length, malware):
        calls.append(1)
        if len(calls) == 5:
            raise OSError('disk full')
        return real(rng, length, malware)
    monkeypatch.setattr(eg, 'make_file', failing)
    with pytest.raises(OSError, match='disk full'):
        eg.write_dataset(tmp_path, count=8, length=4096, workers=0, verbose=False)
    assert not list(tmp_path.rglob('signatures.csv')) and not list(tmp_path.rglob('*.tmp'))
    assert len(tree(tmp_path / 'train')) == 4  # the files before the failure are complete
    monkeypatch.setattr(eg, 'make_file', real)
    eg.write_dataset(tmp_path, count=8, length=4096, workers=0, verbose=False)
    assert len(rows(tmp_path / 'train')) + len(rows(tmp_path / 'test')) == 8


@pytest.mark.parametrize('kwargs, message', [
    (dict(count=0), 'count must be an integer >= 1'),
    (dict(count=4, length=1000), 'length must be'),
    (dict(count=4, length=5000, min_length=6000), 'min_length must be'),
    (dict(count=4, test_fraction=1.5), 'test_fraction'),
    (dict(count=4, seed=-1), 'seed'),
])
def test_bad_arguments_are_refused_before_writing(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        eg.write_dataset(tmp_path / 'x', verbose=False, **kwargs)
    assert not (tmp_path / 'x').exists()
    with pytest.raises(ValueError):
        eg.make_file(np.random.default_rng(0), 100, True)


# --------------------------------------------------------------------------
# Command line


def run(*args, cwd=ROOT, script='ember/generate.py'):
    return subprocess.run([sys.executable, script, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_cli_from_the_repository_root_and_from_inside_ember(tmp_path):
    args = ['--count', '6', '--length', '4096', '--seed', '3', '--workers', '1']
    top = run('--output_dir', str(tmp_path / 'top'), *args)
    assert top.returncode == 0, top.stderr
    lines = top.stdout.strip().splitlines()
    assert lines[0].startswith('generating 6 files') and any('6/6 files' in line for line in lines)
    assert lines[-1].startswith('wrote 6 files') and 'train 5 (3 benign, 2 malware), test 1 (1 benign' in lines[-1]
    inside = run('--output_dir', str(tmp_path / 'inside'), *args, cwd=ROOT / 'ember', script='generate.py')
    assert inside.returncode == 0, inside.stderr
    for split in ('train', 'test'):
        assert tree(tmp_path / 'top' / split) == tree(tmp_path / 'inside' / split)


@pytest.mark.parametrize('args', [
    ['--count', '0'],
    ['--count', 'many'],
    ['--count', '4', '--test_fraction', '1.5'],
    ['--count', '4', '--length', '100'],
    ['--count', '4', '--workers', '-1'],
    ['--count', '4', '--length', '5000', '--min_length', '6000'],
    ['--count', '4', '--output_dir', '/dev/null/DATA'],
])
def test_cli_bad_argument_is_one_line(tmp_path, args):
    if '--output_dir' not in args:
        args = ['--output_dir', str(tmp_path / 'x'), *args]
    result = run(*args)
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1 and 'error' in result.stderr, result.stderr
    assert 'Traceback' not in result.stderr
