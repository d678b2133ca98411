"""Retrieval: the AAN pair files in the LRA format, the shared two towers, the script end to end."""
import dataclasses
import subprocess
import sys

import numpy as np
import pytest

import trainer
from conftest import ROOT
from hrrformer import build_model
from retrieval.dataset import SPLITS, load_dataset
from text.dataset import encode_bytes
from utils import UserError

LONG = 'x' * 5000 + ' tail'
ROWS = [  # label (written as a float, as in the archive), id1, id2, text1, text2
    ('1.0', 'P01-1001', 'J02-2002', 'We use "quoted" words, and \'single\' ones.', 'A short abstract.'),
    ('0.0', 'P03-1003', 'W04-4004', LONG, 'Naïve Bayes "works" <br /> here'),
    ('1', 'P05-1005', 'P06-1006', '"', 'end'),
]


def write_split(directory, rows, name):
    text = ''.join('\t'.join(row) + '\n' for row in rows)
    (directory / name).write_text(text, encoding='utf-8')


@pytest.fixture
def data_dir(tmp_path):
    for name in SPLITS.values():
        write_split(tmp_path, ROWS, name)
    return tmp_path


def config_for(data_dir, **changes):
    from retrieval.hrrformer_mgpu import config
    return dataclasses.replace(config, data_dir=str(data_dir), **changes)


def row_order(split, rows, max_seq_len):
    """Which of `rows` each loaded example is (found by its second document)."""
    wanted = [encode_bytes([row[4]], max_seq_len)[0].tolist() for row in rows]
    return [wanted.index(ids) for ids in split['inputs2'].tolist()]


def test_reads_the_real_format(data_dir):
    train, valid, test = load_dataset(config_for(data_dir, max_seq_len=64))
    order = row_order(train, ROWS, 64)
    assert sorted(order) == [0, 1, 2]                         # each row once, in the loader's fixed order
    train = {key: value[np.argsort(order)] for key, value in train.items()}  # back in file order
    assert train['targets'].tolist() == [1, 0, 1]
    assert train['inputs1'].shape == train['inputs2'].shape == (3, 64)
    np.testing.assert_array_equal(train['inputs1'][0], encode_bytes([ROWS[0][3]], 64)[0])  # quotes kept
    assert train['inputs1'][2, 0] == ord('"') + 1 and not train['inputs1'][2, 1:].any()
    assert (train['inputs1'][1] == ord('x') + 1).all()  # the long document is cut to max_seq_len
    np.testing.assert_array_equal(train['inputs2'][1], encode_bytes([ROWS[1][4]], 64)[0])
    assert len(list(data_dir.glob('*.T64.*.npy'))) == 9


@pytest.mark.parametrize('line, problem', [
    ('1.0\tP1\tP2\tonly four fields', '4 tab-separated fields instead of 5'),
    ('yes\tP1\tP2\ta\tb', "label b'yes' is not a number"),
    ('2.0\tP1\tP2\ta\tb', 'label 2.0 is not 0 or 1'),
    ('1.7\tP1\tP2\ta\tb', 'label 1.7 is not 0 or 1'),     # never rounded into a class
    ('0.5\tP1\tP2\ta\tb', 'label 0.5 is not 0 or 1'),
    ('-0.9\tP1\tP2\ta\tb', 'label -0.9 is not 0 or 1'),
    ('inf\tP1\tP2\ta\tb', 'label inf is not 0 or 1'),
    ('nan\tP1\tP2\ta\tb', 'label nan is not 0 or 1'),
])
def test_malformed_row_names_file_and_line(data_dir, line, problem):
    (data_dir / SPLITS['valid']).write_text('\t'.join(ROWS[0]) + '\n' + line + '\n')
    with pytest.raises(UserError, match=f'new_aan_pairs.eval.tsv:2: malformed row: {problem}'):
        load_dataset(config_for(data_dir))


def test_labels_written_as_integers_or_floats(data_dir):
    rows = [('0', *ROWS[0][1:]), ('1.0', *ROWS[1][1:]), ('0.0', *ROWS[2][1:]), ('1', 'P1', 'P2', 'a', 'b')]
    write_split(data_dir, rows, SPLITS['test'])
    _, _, test = load_dataset(config_for(data_dir, max_seq_len=64))
    assert [[0, 1, 0, 1][i] for i in row_order(test, rows, 64)] == test['targets'].tolist()


def test_rows_sorted_by_label_are_put_in_a_fixed_random_order(data_dir):
    rows = [(str(label), f'P{i}', 'P', f'doc {i}', f'other {i}') for i, label in enumerate([0] * 20 + [1] * 20)]
    write_split(data_dir, rows, SPLITS['valid'])
    _, valid, _ = load_dataset(config_for(data_dir, max_seq_len=16))
    assert sorted(row_order(valid, rows, 16)) == list(range(40))
    assert 3 <= valid['targets'][:10].sum() <= 7            # the first 10 (--eval_examples=10): both labels
    _, again, _ = load_dataset(config_for(data_dir, max_seq_len=8))  # a fresh build, in the same order
    np.testing.assert_array_equal(again['targets'], valid['targets'])


def test_missing_archive_says_where_to_get_it(tmp_path):
    with pytest.raises(UserError, match='lacks new_aan_pairs.train.tsv.*lra_release.gz.*tsv_data'):
        load_dataset(config_for(tmp_path / 'nothing'))


def test_the_two_towers_share_their_parameters(data_dir):
    config = config_for(data_dir, max_seq_len=64)
    train, _, _ = load_dataset(config)
    state, _ = trainer.init_state(config, build_model(config), train, steps_per_decay=1)
    e, layer = 128, 4 * 128 ** 2 + (128 * 64 + 64 + 64 * 128) + 2 * 128  # attention, MLP, LayerNorm
    one_tower = 4 * layer + 257 * e + 2 * e                                # layers, tokens, LayerNorm
    assert trainer.count_params(state.params['encoder']) == one_tower
    assert trainer.count_params(state.params) == one_tower + (4 * e * e + e) + (e * 2 + 2)
    log_probs = state.apply_fn({'params': state.params}, train['inputs1'], train['inputs2'])
    swapped = state.apply_fn({'params': state.params}, train['inputs2'], train['inputs1'])
    assert log_probs.shape == (3, 2) and not np.allclose(log_probs, swapped)


def test_script_runs_end_to_end(data_dir, tmp_path):
    for name in SPLITS.values():
        write_split(data_dir, ROWS * 3, name)
    result = subprocess.run(
        [sys.executable, str(ROOT / 'retrieval' / 'hrrformer_mgpu.py'), f'--data_dir={data_dir}',
         f'--workdir={tmp_path}/w', '--n_layer=1', '--embed_size=16', '--heads=2', '--max_seq_len=32',
         '--epochs=1', '--batch_size=2'], cwd=ROOT / 'retrieval', capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'epoch 1/1: train loss' in result.stdout and '9 train / 9 valid / 9 test' in result.stdout
