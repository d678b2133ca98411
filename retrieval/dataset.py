"""Retrieval (LRA): do two ACL Anthology papers cite each other? Read as bytes, one tower each.

Files `new_aan_pairs.{train,eval,test}.tsv` of the LRA release (lra_release/lra_release/tsv_data):
no header; tab-separated columns label, id1, id2, text1, text2; quote characters are literal text.
Each document becomes ids byte + 1 (pad 0, vocabulary 257), its first max_seq_len bytes, padded.
Train on train, validate on eval, test on test. Each split's rows are put in one fixed seeded order
(LRA shuffles them too). Arrays are cached as .npy beside the files.
"""
from pathlib import Path

import numpy as np

from text.dataset import encode_bytes
from utils import ROOT, UserError, cached_arrays

VOCAB_SIZE = 257
NUM_CLASSES = 2
DEFAULT_DATA_DIR = ROOT / 'lra_release' / 'lra_release' / 'tsv_data'
CACHE_VERSION = 1  # raise when read_tsv or shuffled change what is cached
ORDER_SEED = 0  # the fixed order of every split's rows
SPLITS = {'train': 'new_aan_pairs.train.tsv', 'valid': 'new_aan_pairs.eval.tsv', 'test': 'new_aan_pairs.test.tsv'}


def read_tsv(path, max_seq_len):
    """One split -> {'inputs1', 'inputs2': (N, max_seq_len) uint16 ids, 'targets': (N,) int32}.
    Lines are split on tabs only: LRA reads these files with quoting off. A malformed row stops
    with the file name and line number."""
    inputs1, inputs2, targets = [], [], []
    with open(path, 'rb') as f:
        for number, line in enumerate(f, start=1):
            line = line.rstrip(b'\r\n')
            if not line:
                continue
            fields = line.split(b'\t')
            if len(fields) != 5:
                raise UserError(f'{path}:{number}: malformed row: {len(fields)} tab-separated fields instead of 5 '
                                f'(label, id1, id2, text1, text2)')
            label = read_label(path, number, fields[0])
            inputs1.append(encode_bytes([fields[3]], max_seq_len)[0].astype(np.uint16))
            inputs2.append(encode_bytes([fields[4]], max_seq_len)[0].astype(np.uint16))
            targets.append(label)
    if not targets:
        raise UserError(f'{path} has no examples')
    return {'inputs1': np.stack(inputs1), 'inputs2': np.stack(inputs2), 'targets': np.asarray(targets, np.int32)}


def read_label(path, number, text):
    """A label field -> 0 or 1. LRA parses it as a float, so '1.0' is 1; but a value that is not exactly
    0 or 1 (0.5, 1.7, -0.9, inf, nan) is refused, never rounded into a class."""
    try:
        value = float(text)
    except ValueError:
        raise UserError(f'{path}:{number}: malformed row: label {text[:20]!r} is not a number') from None
    if value not in (0.0, 1.0):
        raise UserError(f'{path}:{number}: malformed row: label {text[:20].decode(errors="replace")} is not 0 or 1')
    return int(value)


def shuffled(arrays):
    """The rows in a fixed seeded order (whatever the training seed), so that the first N rows of a split
    (--eval_examples=N) are a fair sample even if a file lists its rows sorted by label."""
    order = np.random.default_rng(ORDER_SEED).permutation(len(arrays['targets']))
    return {key: value[order] for key, value in arrays.items()}


def load_dataset(config):
    """(train, valid, test) dicts with 'inputs1', 'inputs2' (N, max_seq_len) uint16 and 'targets' (N,) int32."""
    data_dir = DEFAULT_DATA_DIR if config.data_dir is None else Path(config.data_dir).expanduser().resolve()
    missing = [name for name in SPLITS.values() if not (data_dir / name).is_file()]
    if missing:
        raise UserError(f'{data_dir} lacks {", ".join(missing)}: download lra_release.gz (Long Range Arena, '
                        f'google-research/long-range-arena) and unpack it in the repository root, so that '
                        f'lra_release/lra_release/tsv_data/ holds the AAN files, or pass --data_dir=DIR')

    def load(name):
        path = data_dir / SPLITS[name]
        return cached_arrays(path.with_name(f'{path.stem}.T{config.max_seq_len}'), ('inputs1', 'inputs2', 'targets'),
                             lambda: shuffled(read_tsv(path, config.max_seq_len)), f'encoding {path}',
                             settings={'max_seq_len': config.max_seq_len, 'loader': CACHE_VERSION}, sources=[path])
    return load('train'), load('valid'), load('test')
