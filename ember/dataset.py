"""EMBER: whole executables read as byte sequences, benign (0) or malware (1).

Layout: DATA/{train,test}/{benign,malware}/ with files anywhere below (folders walked recursively),
each gzip-compressed or raw, told apart by content (the gzip magic bytes), not by name. A file's
first max_seq_len (decompressed) bytes become ids byte + 1 (pad 0, vocabulary 257), padded to
exactly max_seq_len (the original padded to the longest file of a batch, which crashed its
position table). Empty, unreadable and truncated-gzip files are found once, skipped and counted.
A seeded tenth of train is held out for validation. The files do not fit in memory: batches are
read in parallel by a PyTorch DataLoader whose workers come from a fork server (JAX is
multithreaded, and a plain fork of its threads can deadlock).
"""
import gzip
import hashlib
import json
import os
import zlib
from pathlib import Path

import numpy as np

from utils import UserError

VOCAB_SIZE = 257
NUM_CLASSES = 2
CLASSES = {'benign': 0, 'malware': 1}
VALID_FRACTION = 0.1
SPLIT_SEED = 0  # the hold-out is fixed, whatever the training seed
GZIP_MAGIC = b'\x1f\x8b'


def read_ids(path, max_seq_len):
    """The first max_seq_len bytes of a raw or gzip file -> (max_seq_len,) uint16 ids, byte + 1, pad 0.
    Raises OSError, EOFError or zlib.error for an unreadable or truncated file, ValueError for an empty one."""
    with open(path, 'rb') as f:
        compressed = f.read(2) == GZIP_MAGIC
        f.seek(0)
        data = gzip.GzipFile(fileobj=f).read(max_seq_len) if compressed else f.read(max_seq_len)
    if not data:
        raise ValueError('empty file')
    ids = np.zeros(max_seq_len, np.uint16)
    ids[:len(data)] = np.frombuffer(data, np.uint8).astype(np.uint16) + 1
    return ids


def list_files(split_dir):
    """[(path, label)] of every file under split_dir/benign and split_dir/malware, sorted."""
    found = []
    for name, label in CLASSES.items():
        for root, _, files in os.walk(split_dir / name):
            found += [(Path(root) / file, label) for file in files]
    return sorted(found)


class Reader:
    """A map-style dataset for torch's DataLoader: index -> (ids, label, ok). Kept free of torch so
    spawned workers import little."""

    def __init__(self, files, max_seq_len):
        self.files, self.max_seq_len = files, max_seq_len

    def __len__(self):
        return len(self.files)

    def __getitem__(self, index):
        path, label = self.files[index]
        try:
            return read_ids(path, self.max_seq_len), label, True
        except (OSError, EOFError, ValueError, zlib.error):
            return np.zeros(self.max_seq_len, np.uint16), label, False


def collate(items):
    ids, labels, ok = zip(*items)
    return {'inputs': np.stack(ids), 'targets': np.asarray(labels, np.int32), 'ok': np.asarray(ok)}


class IndexBatches:
    """A batch sampler whose batches are set before each pass, so one DataLoader (and its workers)
    serves every epoch."""

    def __init__(self):
        self.batches = []

    def __iter__(self):
        return iter([list(map(int, batch)) for batch in self.batches])

    def __len__(self):
        return len(self.batches)


def worker_context():
    """forkserver: workers fork from a clean server process (started once, without JAX's threads);
    spawn where there is no forkserver. Never a plain fork of this multithreaded process."""
    import multiprocessing
    return 'forkserver' if 'forkserver' in multiprocessing.get_all_start_methods() else 'spawn'


def make_loader(files, max_seq_len, batch_sampler, workers, persistent=False):
    """A DataLoader of numpy batches read by `workers` processes (0: in this process)."""
    from torch.utils.data import DataLoader  # imported only when files are read
    return DataLoader(Reader(files, max_seq_len), batch_sampler=batch_sampler, collate_fn=collate,
                      num_workers=workers, multiprocessing_context=worker_context() if workers else None,
                      persistent_workers=persistent and workers > 0, prefetch_factor=4 if workers else None)


class FileSplit:
    """A split read from files on demand: len() and batches(index_batches), as the trainer expects.
    One DataLoader with persistent workers serves every pass."""

    def __init__(self, files, max_seq_len, workers):
        self.files, self.max_seq_len, self.workers = files, max_seq_len, workers
        self.sampler, self.loader = IndexBatches(), None

    def __len__(self):
        return len(self.files)

    def batches(self, index_batches):
        if self.loader is None:
            self.loader = make_loader(self.files, self.max_seq_len, self.sampler, self.workers, persistent=True)
        self.sampler.batches = list(index_batches)
        for batch in self.loader:
            batch.pop('ok')  # checked once when the split was made
            yield batch


def check_files(files, max_seq_len, workers):
    """The files whose first max_seq_len bytes can be read."""
    chunks = [list(range(s, min(s + 256, len(files)))) for s in range(0, len(files), 256)]
    ok = [good for batch in make_loader(files, max_seq_len, chunks, workers) for good in batch['ok']]
    return [file for file, good in zip(files, ok) if good]


def readable_files(split_dir, max_seq_len, workers):
    """The readable files of a split, checked once per listing and length (cached beside the data)."""
    files = list_files(split_dir)

    def stamp(path):  # a file that cannot even be looked at gets no size
        try:
            return path.stat().st_size, path.stat().st_mtime_ns
        except OSError:
            return -1, -1
    listing = hashlib.sha256(json.dumps([(str(p), *stamp(p), y) for p, y in files]).encode()).hexdigest()
    cache = split_dir / f'.hrrformer_readable.T{max_seq_len}.json'
    if cache.exists():
        saved = json.loads(cache.read_text())
        if saved.get('listing') == listing:
            good = [(split_dir / path, label) for path, label in saved['files']]
            return good, len(files) - len(good)
    print(f'checking the {len(files)} files under {split_dir} (once) ...', flush=True)
    good = check_files(files, max_seq_len, workers)
    try:
        tmp = cache.with_suffix('.tmp')
        tmp.write_text(json.dumps({'listing': listing,
                                   'files': [(str(p.relative_to(split_dir)), y) for p, y in good]}))
        os.replace(tmp, cache)
    except OSError:
        pass  # a read-only data folder: check again next time
    return good, len(files) - len(good)


def load_splits(data_dir, max_seq_len, workers):
    """(train, valid, test) FileSplits of DATA/{train,test}/{benign,malware}."""
    data_dir = Path(data_dir)
    for split in ('train', 'test'):
        if not any((data_dir / split / name).is_dir() for name in CLASSES):
            raise UserError(f'{data_dir / split} has neither benign/ nor malware/: the layout is '
                            f'DATA/{{train,test}}/{{benign,malware}}/ (files anywhere below, raw or gzip); '
                            f'make a stand-in with python ember/generate.py --output_dir DATA')
    train, skipped_train = readable_files(data_dir / 'train', max_seq_len, workers)
    test, skipped_test = readable_files(data_dir / 'test', max_seq_len, workers)
    if skipped_train + skipped_test:
        print(f'skipped {skipped_train + skipped_test} empty, unreadable or truncated file(s) '
              f'({skipped_train} in train, {skipped_test} in test)')
    if not train or not test:
        raise UserError(f'no readable files in {data_dir / ("train" if not train else "test")}')
    order = np.random.default_rng(SPLIT_SEED).permutation(len(train))
    n_valid = max(1, int(VALID_FRACTION * len(train)))
    held_out = set(order[:n_valid].tolist())
    valid = [f for i, f in enumerate(train) if i in held_out]
    train = [f for i, f in enumerate(train) if i not in held_out]
    return tuple(FileSplit(files, max_seq_len, workers) for files in (train, valid, test))
