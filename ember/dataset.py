"""EMBER: whole executables read as byte sequences, benign (0) or malware (1).

Layout: DATA/{train,test}/{benign,malware}/ with files anywhere below (folders walked recursively),
each gzip-compressed or raw, told apart by content (the gzip magic bytes), not by name. A file's
first max_seq_len (decompressed) bytes become ids byte + 1 (pad 0, vocabulary 257), padded to
exactly max_seq_len (the original padded to the longest file of a batch, which crashed its
position table). Empty, unreadable and truncated-gzip files are found once, skipped and counted, as
are hidden files and anything that is not a regular file. Both classes must be there in both splits.
Each split's files are put in one fixed seeded order (so the first N are a fair sample), and a
seeded share of train (valid_fraction, a tenth by default) is held out for validation. The files
do not fit in memory: batches are read in parallel by a PyTorch DataLoader whose workers come from
a fork server (JAX is multithreaded, and a plain fork of its threads can deadlock); the workers
end themselves when the trainer dies, even by kill -9.
"""
import gzip
import os
import stat
import threading
import time
import zlib
from functools import partial
from pathlib import Path

import numpy as np

from utils import UserError, cached_arrays

VOCAB_SIZE = 257
NUM_CLASSES = 2
CLASSES = {'benign': 0, 'malware': 1}
ORDER_SEED = 0  # every split's order, and so the hold-out, is fixed, whatever the training seed
GENERATOR_FILES = ('signatures.csv',)  # what ember/generate.py writes beside the class folders
CACHE_VERSION = 1  # raise when check_files changes what it caches
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
    """[(path, label)] of the regular files under split_dir/benign and split_dir/malware (symlinks followed),
    sorted, and how many entries were skipped: FIFOs, sockets and broken links (reading a FIFO would
    wait forever), hidden files (.DS_Store, a generator's temporary files) and unreadable folders."""
    found, skipped = [], []
    for name, label in CLASSES.items():
        for root, folders, files in os.walk(split_dir / name, onerror=skipped.append):
            folders[:] = [folder for folder in folders if not folder.startswith('.')]
            for file in files:
                path = Path(root) / file
                if not file.startswith('.') and is_regular(path):
                    found.append((path, label))
                else:
                    skipped.append(path)
    return sorted(found), len(skipped)


def is_regular(path):
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def check_layout(split_dir):
    """Both class folders, and nothing else that could hold examples: a file beside them has no label."""
    try:
        entries = sorted(entry.name for entry in os.scandir(split_dir) if not entry.name.startswith('.'))
    except OSError as error:
        raise UserError(f'cannot read {split_dir} ({error.strerror or error}): check its permissions') from None
    others = [name for name in entries if name not in CLASSES and name not in GENERATOR_FILES]
    for name in CLASSES:
        if not (split_dir / name).is_dir():
            found = f' (it holds {", ".join(others[:5])})' if others else ''
            raise UserError(f'{split_dir / name} is missing{found}: the layout is DATA/{{train,test}}/{{benign,malware}}/ '
                            f'(lower case; files anywhere below, raw or gzip); make a stand-in with '
                            f'python ember/generate.py --output_dir DATA')
    if others:
        more = f' and {len(others) - 5} more' if len(others) > 5 else ''
        raise UserError(f'{split_dir} holds {", ".join(others[:5])}{more} outside benign/ and malware/: their class '
                        f'is unknown; move each into benign/ or malware/, or out of {split_dir}')


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


def alive(pid):
    """Whether process `pid` runs: a killed process stays a zombie until its parent reaps it."""
    try:
        with open(f'/proc/{pid}/stat', 'rb') as f:
            return f.read().rsplit(b')', 1)[1].split()[0] not in (b'Z', b'X')  # the state follows the name
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (macOS): ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def watch_trainer(pid, worker_id=None):
    """worker_init_fn: a reader ends itself within a second once the trainer `pid` is gone. A reader's
    parent is the fork server, not the trainer; after kill -9 of the trainer nobody would stop the
    readers, and while they live the fork server and the resource tracker (whose pipes they hold) live too."""
    def watch():
        while alive(pid):
            time.sleep(0.5)
        os._exit(0)
    threading.Thread(target=watch, name='watch-trainer', daemon=True).start()


def make_loader(files, max_seq_len, batch_sampler, workers, persistent=False):
    """A DataLoader of numpy batches read by `workers` processes (0: in this process)."""
    from torch.utils.data import DataLoader  # imported only when files are read
    return DataLoader(Reader(files, max_seq_len), batch_sampler=batch_sampler, collate_fn=collate,
                      num_workers=workers, multiprocessing_context=worker_context() if workers else None,
                      worker_init_fn=partial(watch_trainer, os.getpid()) if workers else None,
                      persistent_workers=persistent and workers > 0, prefetch_factor=4 if workers else None)


class FileSplit:
    """A split read from files on demand: len() and batches(index_batches), as the trainer expects.
    One DataLoader with persistent workers serves every pass."""

    def __init__(self, files, max_seq_len, workers):
        self.files, self.max_seq_len, self.workers = files, max_seq_len, workers
        self.sampler, self.loader = IndexBatches(), None
        self.labels = np.asarray([label for _, label in files], np.int64)  # known without reading a file

    def __len__(self):
        return len(self.files)

    def batches(self, index_batches):
        if self.loader is None:
            self.loader = make_loader(self.files, self.max_seq_len, self.sampler, self.workers, persistent=True)
        self.sampler.batches = list(index_batches)
        for index, batch in zip(self.sampler.batches, self.loader):  # the loader keeps the batches' order
            ok = batch.pop('ok')
            if not ok.all():  # readable when the split was made, not any more: never train on a zero row
                path = self.files[int(index[int(np.argmin(ok))])][0]
                raise UserError(f'{path} became unreadable during the run; run again to check the files anew')
            yield batch


def check_files(files, max_seq_len, workers):
    """{'ok': (N,) bool}: whether each file's first max_seq_len bytes can be read."""
    chunks = [list(range(s, min(s + 256, len(files)))) for s in range(0, len(files), 256)]
    return {'ok': np.asarray([good for batch in make_loader(files, max_seq_len, chunks, workers) for good in batch['ok']],
                             dtype=bool).reshape(len(files))}


def readable_files(split_dir, max_seq_len, workers):
    """The readable files of a split, in a fixed seeded order, and how many were skipped. Which files are
    readable is found once per listing and length (cached beside the data, keyed on every file)."""
    check_layout(split_dir)
    files, skipped = list_files(split_dir)
    ok = cached_arrays(split_dir / f'.hrrformer_readable.T{max_seq_len}', ('ok',),
                       lambda: check_files(files, max_seq_len, workers), f'checking the {len(files)} files under {split_dir}',
                       settings={'max_seq_len': max_seq_len, 'loader': CACHE_VERSION},
                       sources=[path for path, _ in files])['ok']
    good = [file for file, readable in zip(files, ok) if readable]
    for name, label in CLASSES.items():
        if not any(y == label for _, y in good):
            raise UserError(f'no readable files in {split_dir / name}: both classes are needed to train and to '
                            f'measure accuracy')
    order = np.random.default_rng(ORDER_SEED).permutation(len(good))  # the files were sorted, so by class:
    return [good[i] for i in order], skipped + len(files) - len(good)  # the first N of a split must be a fair sample


def check_valid_fraction(value):
    if not 0 <= value < 1:
        raise UserError(f'--valid_fraction must be in [0, 1) (0: validate on test), not {value}')


def load_splits(data_dir, max_seq_len, workers, valid_fraction=0.1):
    """(train, valid, test) FileSplits of DATA/{train,test}/{benign,malware}: a seeded `valid_fraction` of
    the training files is held out for validation; with 0, every training file is trained on and the test
    split validates (the original's protocol)."""
    data_dir = Path(data_dir)
    check_valid_fraction(valid_fraction)
    for split in ('train', 'test'):
        if not (data_dir / split).is_dir():
            raise UserError(f'{data_dir / split} is missing: the layout is DATA/{{train,test}}/{{benign,malware}}/ '
                            f'(files anywhere below, raw or gzip); make a stand-in with '
                            f'python ember/generate.py --output_dir DATA')
    train, skipped_train = readable_files(data_dir / 'train', max_seq_len, workers)
    test, skipped_test = readable_files(data_dir / 'test', max_seq_len, workers)
    if skipped_train + skipped_test:
        print(f'skipped {skipped_train + skipped_test} file(s) or folder(s) that are empty, unreadable, truncated, '
              f'hidden or not regular files ({skipped_train} in train, {skipped_test} in test)')
    test = FileSplit(test, max_seq_len, workers)
    if valid_fraction == 0:
        return FileSplit(train, max_seq_len, workers), test, test
    n_valid = max(1, int(valid_fraction * len(train)))  # the order is random already: hold out the first
    return FileSplit(train[n_valid:], max_seq_len, workers), FileSplit(train[:n_valid], max_seq_len, workers), test
