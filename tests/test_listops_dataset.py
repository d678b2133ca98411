"""The ListOps loader on files in the LRA archive's exact format (rows of the official generator)."""
import dataclasses
import json
import os
import shutil

import numpy as np
import pytest

from conftest import FIXTURES
from listops import dataset
from listops.dataset import VOCAB, encode, load_dataset, tokenize
from trainer import Config
from utils import UserError


@pytest.fixture
def data_dir(tmp_path):
    return shutil.copytree(FIXTURES / 'listops-1000', tmp_path / 'listops')


# the fixed mapping, written out: digits 0-9 are ids 1-10, then [MIN [MAX [MED [SM and X (a closing ']')
IDS = {**{str(d): d + 1 for d in range(10)}, '[MIN': 11, '[MAX': 12, '[MED': 13, '[SM': 14, 'X': 15}


def by_hand(expression):
    """LRA's tokenization written out here: drop the parentheses, ']' is X, split on spaces."""
    return [IDS['X' if word == ']' else word] for word in expression.split() if word not in '()']


def test_tokenize_known_expression():
    expression = '( ( ( [MAX 2 ) ( ( ( [SM 9 ) 0 ) ] ) ) ] )'
    assert tokenize(expression) == [12, 3, 14, 10, 1, 15, 15]
    assert VOCAB == IDS
    assert len(set(VOCAB.values())) == 15 and min(VOCAB.values()) == 1 and max(VOCAB.values()) == 15
    assert dataset.VOCAB_SIZE == 17 and dataset.OOV_ID == 16


def test_truncation_and_padding():
    ids = encode(['( ( ( [MIN 1 ) 2 ) ] )', '3'], max_seq_len=3)
    assert ids.tolist() == [[11, 2, 3], [4, 0, 0]]
    assert encode(['7'], max_seq_len=5).tolist() == [[8, 0, 0, 0, 0]]


def test_loads_real_files_and_caches(data_dir, monkeypatch):
    config = Config(data_dir=str(data_dir), max_seq_len=2000)
    train, valid, test = load_dataset(config)
    assert [len(s['targets']) for s in (train, valid, test)] == [24, 7, 9]
    assert train['inputs'].shape == (24, 2000) and train['targets'].dtype == np.int32
    # the first real row: its label and its tokens read straight from the file
    source, target = (data_dir / 'basic_train.tsv').read_text().split('\n')[1].rstrip('\r').split('\t')
    assert train['targets'][0] == int(target)
    n = len(by_hand(source))
    assert 500 < n < 2000 and train['inputs'][0, :n].tolist() == by_hand(source)
    assert not train['inputs'][0, n:].any()
    assert sorted(p.name for p in data_dir.glob('*.npy'))[:2] == ['basic_test.T2000.inputs.npy',
                                                                  'basic_test.T2000.targets.npy']

    def no_parsing(*_):
        raise AssertionError('the .npy cache should have been used')
    monkeypatch.setattr(dataset, 'read_tsv', no_parsing)
    again, _, _ = load_dataset(config)
    np.testing.assert_array_equal(again['inputs'], train['inputs'])


def test_cache_is_rebuilt_for_another_length_or_newer_file(data_dir):
    config = Config(data_dir=str(data_dir), max_seq_len=2000)
    full, _, _ = load_dataset(config)
    short, _, _ = load_dataset(dataclasses.replace(config, max_seq_len=10))
    np.testing.assert_array_equal(short['inputs'], full['inputs'][:, :10])
    lines = (data_dir / 'basic_train.tsv').read_bytes().split(b'\r\n')
    (data_dir / 'basic_train.tsv').write_bytes(b'\r\n'.join(lines[:1] + lines[2:]))  # drop the first row
    cache = data_dir / 'basic_train.T2000.inputs.npy'
    os.utime(cache, (cache.stat().st_mtime - 10, cache.stat().st_mtime - 10))
    fewer, _, _ = load_dataset(config)
    np.testing.assert_array_equal(fewer['inputs'], full['inputs'][1:])


@pytest.mark.parametrize('row, problem', [
    ('( ( ( [MAX 2 ) 9 ) ] )', '1 tab-separated fields instead of 2'),
    ('( ( ( [MAX 2 ) 9 ) ] )\tnine', 'malformed row'),
    ('( ( ( [MAX 2 ) 9 ) ] )\t12', 'not a digit'),
    ('( ( ( [MOD 2 ) 9 ) ] )\t1', "unknown token '\\[MOD'"),
])
def test_malformed_row_names_file_and_line(data_dir, row, problem):
    path = data_dir / 'basic_val.tsv'
    lines = path.read_text().split('\n')
    lines[3] = row + '\r'
    path.write_text('\n'.join(lines))
    with pytest.raises(UserError, match=rf'basic_val.tsv:4: .*{problem}'):
        load_dataset(Config(data_dir=str(data_dir)))


def test_missing_data_dir_says_how_to_get_data(tmp_path):
    with pytest.raises(UserError, match='lacks basic_train.tsv.*generate.py --output_dir'):
        load_dataset(Config(data_dir=str(tmp_path / 'nowhere')))


def test_default_data_dir_is_generated_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(dataset, 'LRA_DIR', tmp_path / 'lra_release' / 'listops-1000')
    monkeypatch.setattr(dataset, 'GENERATED_DIR', tmp_path / 'data' / 'listops-1000')
    calls = []
    from listops.generate import write_dataset

    def small_set(output_dir):
        calls.append(output_dir)
        write_dataset(output_dir, train=30, valid=5, test=5, seed=0, verbose=False)
    monkeypatch.setattr('listops.generate.write_dataset', small_set)
    assert dataset.default_data_dir() == tmp_path / 'data' / 'listops-1000'
    assert 'generating' in capsys.readouterr().out
    assert dataset.default_data_dir() == tmp_path / 'data' / 'listops-1000'
    assert len(calls) == 1
    shutil.copytree(FIXTURES / 'listops-1000', tmp_path / 'lra_release' / 'listops-1000')
    assert dataset.default_data_dir() == tmp_path / 'lra_release' / 'listops-1000'  # the real data wins


def swap_labels(path):
    """The same file with other labels (same size): what a corrected copy of the data looks like."""
    lines = path.read_bytes().split(b'\r\n')
    for i in range(1, len(lines)):
        if lines[i]:
            source, target = lines[i].split(b'\t')
            lines[i] = source + b'\t' + str(9 - int(target)).encode()
    return b'\r\n'.join(lines)


@pytest.mark.parametrize('how', ['cp -p', 'tar x'])
def test_replaced_data_with_an_older_mtime_is_read_again(data_dir, tmp_path, how):
    config = Config(data_dir=str(data_dir), max_seq_len=2000)
    before, _, _ = load_dataset(config)
    path = data_dir / 'basic_train.tsv'
    old = path.stat()
    replacement = tmp_path / 'new' / 'basic_train.tsv'
    replacement.parent.mkdir()
    replacement.write_bytes(swap_labels(path))
    assert replacement.stat().st_size == old.st_size
    # cp -p and rsync -t copy the source's (older) mtime; tar x sets whole seconds from the archive
    mtime = old.st_mtime_ns - 3_600 * 10 ** 9 if how == 'cp -p' else (old.st_mtime_ns // 10 ** 9) * 10 ** 9
    os.utime(replacement, ns=(mtime, mtime))
    shutil.copy2(replacement, path)
    after, _, _ = load_dataset(config)
    np.testing.assert_array_equal(after['targets'], 9 - before['targets'])
    np.testing.assert_array_equal(after['inputs'], before['inputs'])


def test_a_damaged_cache_is_built_again_with_a_note(data_dir, capsys):
    config = Config(data_dir=str(data_dir), max_seq_len=2000)
    train, _, _ = load_dataset(config)
    cache = data_dir / 'basic_train.T2000.inputs.npy'
    cache.write_bytes(cache.read_bytes()[:1000])            # truncated, as by a full disk or a killed copy
    capsys.readouterr()
    again, _, _ = load_dataset(config)
    out = capsys.readouterr().out
    assert 'note: the cache' in out and 'damaged' in out and 'tokenizing' in out
    np.testing.assert_array_equal(again['inputs'], train['inputs'])
    (data_dir / 'basic_train.T2000.key.json').unlink()     # arrays without their key: never trusted
    cache.write_bytes(b'garbage')
    np.testing.assert_array_equal(load_dataset(config)[0]['inputs'], train['inputs'])


@pytest.mark.parametrize('data, problem', [
    (b'Source\tTarget\r\n\xff\xfe( ( [MAX 2 ) 9 ) ] )\t3\r\n', r'basic_val.tsv:2: not UTF-8 text \(byte 0xff at column 1\)'),
    (b'\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00', r'basic_val.tsv:1: not UTF-8 text'),
    (b'Source\tTarget\r\n( ( [MAX 2 ) 9 ) ] )\x00\x00\t3\r\n', r'basic_val.tsv:2: a NUL byte: this is a binary file'),
])
def test_binary_or_non_utf8_file_is_one_line_naming_it(data_dir, data, problem):
    (data_dir / 'basic_val.tsv').write_bytes(data)
    with pytest.raises(UserError, match=problem):
        load_dataset(Config(data_dir=str(data_dir)))


@pytest.mark.parametrize('key', ['[1, 2]', '{"key": 3', '', '{"sizes": null}'])
def test_a_damaged_key_file_means_a_rebuild(data_dir, key):
    config = Config(data_dir=str(data_dir), max_seq_len=2000)
    train, _, _ = load_dataset(config)
    (data_dir / 'basic_train.T2000.key.json').write_text(key)
    np.testing.assert_array_equal(load_dataset(config)[0]['targets'], train['targets'])
    assert json.loads((data_dir / 'basic_train.T2000.key.json').read_text())['key']['settings']['max_seq_len'] == 2000
