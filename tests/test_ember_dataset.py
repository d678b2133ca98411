"""The EMBER loader: raw and gzip files, broken files, exact padding, parallel reading beside JAX."""
import gzip
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT
from ember.dataset import load_splits, read_ids
from utils import UserError

T = 64


def make_tree(root):
    """train/test x benign/malware with every kind of file; returns {relative path: (ids, label)}."""
    rng = np.random.default_rng(0)
    expected = {}
    for split in ('train', 'test'):
        for label, name in enumerate(('benign', 'malware')):
            folders = [root / split / name] * 3 + [root / split / name / 'deep' / 'er', root / split / name / 'deep']
            for i, (size, folder) in enumerate(zip([10, T, 3 * T, 40, 200], folders)):
                data = rng.integers(0, 256, size=size, dtype=np.uint8).tobytes()
                folder.mkdir(parents=True, exist_ok=True)
                path = folder / f'{name}_{i}.bin'  # the name says nothing about compression
                path.write_bytes(gzip.compress(data) if i % 2 else data)
                ids = np.zeros(T, np.int64)
                ids[:min(size, T)] = np.frombuffer(data[:T], np.uint8).astype(np.int64) + 1
                expected[str(path.relative_to(root))] = (ids, label)
            (root / split / name / 'empty.bin').write_bytes(b'')
            (root / split / name / 'truncated.gz').write_bytes(gzip.compress(rng.bytes(4 * T))[:30])
            (root / split / name / 'gone.bin').symlink_to(root / 'nowhere')  # listed, but cannot be opened
    return expected


def test_reads_every_kind_of_file(tmp_path, capsys):
    expected = make_tree(tmp_path)
    train, valid, test = load_splits(tmp_path, T, workers=0)
    assert 'skipped 12 file(s) or folder(s) that are empty, unreadable, truncated, hidden or not regular files ' \
        '(6 in train, 6 in test)' in capsys.readouterr().out
    assert (len(train), len(valid), len(test)) == (9, 1, 10)
    for split in (train, valid, test):
        batch = next(split.batches([np.arange(len(split))]))
        assert batch['inputs'].shape == (len(split), T) and batch['inputs'].dtype == np.uint16
        for (path, label), ids, target in zip(split.files, batch['inputs'], batch['targets']):
            want_ids, want_label = expected[str(path.relative_to(tmp_path))]
            assert target == want_label == label
            np.testing.assert_array_equal(ids, want_ids)  # byte + 1, padded to exactly T, cut at T


def test_read_ids_raises_on_broken_files(tmp_path):
    (tmp_path / 'a').write_bytes(gzip.compress(np.random.default_rng(0).bytes(1000))[:500])
    with pytest.raises(EOFError):
        read_ids(tmp_path / 'a', 800)
    assert len(read_ids(tmp_path / 'a', 100)) == 100  # truncated past the first T bytes: still usable
    (tmp_path / 'b').write_bytes(gzip.compress(b'\x00\xff' * 100))
    assert read_ids(tmp_path / 'b', 3).tolist() == [1, 256, 1]


def test_missing_layout_is_one_clear_error(tmp_path):
    (tmp_path / 'train' / 'benign').mkdir(parents=True)
    with pytest.raises(UserError, match='test is missing: the layout is DATA/{train,test}/{benign,malware}/'):
        load_splits(tmp_path, T, workers=0)


def test_parallel_workers_beside_jax_do_not_deadlock(tmp_path):
    make_tree(tmp_path / 'data')
    script = tmp_path / 'run.py'
    script.write_text(textwrap.dedent(f'''
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        import jax, jax.numpy as jnp, numpy as np
        from ember.dataset import load_splits

        if __name__ == '__main__':
            jax.jit(lambda x: x @ x)(jnp.ones((256, 256))).block_until_ready()  # JAX's threads are running
            train, valid, test = load_splits({str(tmp_path / 'data')!r}, {T}, workers=2)
            for epoch in range(2):
                batches = list(test.batches([np.arange(4), np.arange(4, len(test))]))
                assert [len(b['targets']) for b in batches] == [4, len(test) - 4]
            print('ok', len(train), len(test))
    '''))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith('ok 9 10')


def small_tree(root, counts=None):
    """{split: {class: n}} tiny files named after their class; all of them readable."""
    counts = counts or {'train': {'benign': 3, 'malware': 3}, 'test': {'benign': 2, 'malware': 2}}
    for split, classes in counts.items():
        for name, n in classes.items():
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                (root / split / name / f'{name}_{i}.bin').write_bytes(name.encode() * 4)


@pytest.mark.parametrize('change, message', [
    (lambda root: (root / 'train' / 'malware').rename(root / 'train' / 'Malware'),
     r'train/malware is missing \(it holds Malware\).*lower case'),
    (lambda root: [p.unlink() for p in (root / 'test' / 'benign').iterdir()],
     r'no readable files in \S*test/benign: both classes are needed'),
    (lambda root: (root / 'test' / 'benign' / 'benign_0.bin').write_bytes(b''),  # the only one left is empty
     r'no readable files in \S*test/benign'),
    (lambda root: [(root / 'train' / f'loose_{i}.exe').write_bytes(b'MZ') for i in range(7)],
     r'train holds loose_0.exe, loose_1.exe, loose_2.exe, loose_3.exe, loose_4.exe and 2 more outside benign/ and '
     r'malware/: their class is unknown'),
    (lambda root: (root / 'test' / 'other').mkdir(), r'test holds other outside benign/ and malware/'),
])
def test_both_classes_in_both_splits_or_one_line(tmp_path, change, message):
    small_tree(tmp_path, {'train': {'benign': 3, 'malware': 3}, 'test': {'benign': 1, 'malware': 2}})
    change(tmp_path)
    with pytest.raises(UserError, match=message):
        load_splits(tmp_path, T, workers=0)


def test_the_generators_own_files_and_hidden_files_are_no_examples(tmp_path, capsys):
    small_tree(tmp_path)
    (tmp_path / 'train' / 'signatures.csv').write_text('path,label\n')
    (tmp_path / 'train' / '.DS_Store').write_bytes(b'x')
    (tmp_path / 'train' / 'benign' / '.benign_9.bin.123.tmp').write_bytes(b'half a file')
    train, valid, test = load_splits(tmp_path, T, workers=0)
    assert len(train) + len(valid) == 6 and len(test) == 4
    assert 'skipped 1 file(s)' in capsys.readouterr().out


def test_first_examples_of_every_split_are_a_fair_sample(tmp_path):
    small_tree(tmp_path, {'train': {'benign': 100, 'malware': 100}, 'test': {'benign': 60, 'malware': 40}})
    train, valid, test = load_splits(tmp_path, T, workers=0)
    for split in (train, valid, test):
        labels = np.array([label for _, label in split.files])
        first = labels[:20]                                  # what --eval_examples=20 evaluates
        assert abs(first.mean() - labels.mean()) < 0.2, (first, labels.mean())
    valid_labels = [label for _, label in valid.files]
    assert len(valid_labels) == 20 and 5 <= sum(valid_labels) <= 15  # the hold-out has both classes too
    again = load_splits(tmp_path, T, workers=0)               # the order is fixed
    assert [s.files for s in again] == [s.files for s in (train, valid, test)]


def test_valid_fraction(tmp_path):
    import dataclasses
    from ember.hrrformer_mgpu import config, load_dataset
    small_tree(tmp_path, {'train': {'benign': 10, 'malware': 10}, 'test': {'benign': 2, 'malware': 3}})
    everything = dataclasses.replace(config, data_dir=str(tmp_path), max_seq_len=T, loader_workers=0, valid_fraction=0.0)
    train, valid, test = load_dataset(everything)
    assert sorted(path.name for path, _ in train.files) == sorted(p.name for p in tmp_path.glob('train/*/*.bin'))
    assert valid is test and len(test) == 5                   # the original's protocol: validate on test
    train, valid, test = load_dataset(dataclasses.replace(everything, valid_fraction=0.25))
    assert (len(train), len(valid), len(test)) == (15, 5, 5)
    assert not {p for p, _ in train.files} & {p for p, _ in valid.files}
    for bad in (1.0, -0.1, float('nan')):
        with pytest.raises(UserError, match=r'--valid_fraction must be in \[0, 1\)'):
            load_dataset(dataclasses.replace(everything, valid_fraction=bad))


def test_a_fifo_is_skipped_not_read(tmp_path):
    small_tree(tmp_path)
    os.mkfifo(tmp_path / 'train' / 'malware' / 'pipe')       # reading it would wait for a writer forever
    code = (f'import sys; sys.path.insert(0, {str(ROOT)!r}); from ember.dataset import load_splits; '
            f'train, valid, test = load_splits({str(tmp_path)!r}, {T}, workers=0); print(len(train) + len(valid))')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith('6') and 'skipped 1 file(s)' in result.stdout


def test_an_unreadable_folder_is_counted_as_skipped(tmp_path, monkeypatch, capsys):
    small_tree(tmp_path)
    locked = tmp_path / 'train' / 'benign' / 'locked'
    locked.mkdir()
    (locked / 'hidden_from_us.bin').write_bytes(b'data')
    real_scandir = os.scandir

    def scandir(path='.'):  # as chmod 000 would do (the tests may run as root, who can read anything)
        if Path(path) == locked:
            raise PermissionError(13, 'Permission denied', str(path))
        return real_scandir(path)
    monkeypatch.setattr(os, 'scandir', scandir)
    train, valid, test = load_splits(tmp_path, T, workers=0)
    assert len(train) + len(valid) == 6
    assert 'skipped 1 file(s) or folder(s)' in capsys.readouterr().out


def test_a_file_that_breaks_after_the_check_stops_the_run(tmp_path):
    small_tree(tmp_path)
    train, valid, test = load_splits(tmp_path, T, workers=0)
    path = test.files[2][0]
    path.write_bytes(b'')                                   # emptied after the files were checked
    with pytest.raises(UserError, match=f'{path} became unreadable during the run'):
        list(test.batches([np.arange(len(test))]))
