"""The EMBER loader: raw and gzip files, broken files, exact padding, parallel reading beside JAX."""
import gzip
import subprocess
import sys
import textwrap

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
    assert 'skipped 12 empty, unreadable or truncated file(s) (6 in train, 6 in test)' in capsys.readouterr().out
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
    with pytest.raises(UserError, match='test has neither benign/ nor malware/'):
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
