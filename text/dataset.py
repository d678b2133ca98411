"""Text (LRA): IMDB movie reviews as UTF-8 bytes, binary sentiment.

tensorflow-datasets `imdb_reviews` (config plain_text): train on `train` (25,000 reviews), validate
and test on `test` (25,000), as LRA does (it has no separate validation set). Ids are byte + 1
(pad 0, vocabulary 257), the first max_seq_len bytes, right-padded with 0; labels 0 = negative,
1 = positive. Prepared once through tensorflow-datasets into data_dir, then cached as .npy.
"""
from pathlib import Path

import numpy as np

from utils import ROOT, cached_arrays, tfds_batches

VOCAB_SIZE = 257  # 256 byte values + pad
NUM_CLASSES = 2
DEFAULT_DATA_DIR = ROOT / 'data' / 'tensorflow_datasets'
CACHE_VERSION = 1  # raise when read_split changes what it caches


def encode_bytes(texts, max_seq_len):
    """A list of str (encoded as UTF-8) or bytes -> int32 (N, max_seq_len): byte + 1, right-padded with 0."""
    ids = np.zeros((len(texts), max_seq_len), dtype=np.int32)
    for row, text in enumerate(texts):
        data = text.encode('utf-8') if isinstance(text, str) else bytes(text)
        data = np.frombuffer(data[:max_seq_len], dtype=np.uint8)
        ids[row, :len(data)] = data.astype(np.int32) + 1
    return ids


def read_split(split, data_dir, max_seq_len):
    """One tensorflow-datasets split -> {'inputs' (N, T) uint16, 'targets' (N,) int32}."""
    inputs, targets = [], []
    for texts, labels in tfds_batches('imdb_reviews', split, data_dir):
        inputs.append(encode_bytes(list(texts), max_seq_len).astype(np.uint16))
        targets.append(labels.astype(np.int32))
    return {'inputs': np.concatenate(inputs), 'targets': np.concatenate(targets)}


def load_dataset(config):
    """(train, valid, test); valid and test are both IMDB's test split, as in LRA."""
    data_dir = DEFAULT_DATA_DIR if config.data_dir is None else Path(config.data_dir).expanduser().resolve()

    def load(split):
        return cached_arrays(data_dir / 'npy' / f'imdb_reviews.{split}.T{config.max_seq_len}', ('inputs', 'targets'),
                             lambda: read_split(split, data_dir, config.max_seq_len),
                             f'reading imdb_reviews {split} from tensorflow-datasets in {data_dir}',
                             settings={'data': 'imdb_reviews', 'split': split, 'max_seq_len': config.max_seq_len,
                                       'loader': CACHE_VERSION})
    test = load('test')
    return load('train'), test, test
