"""ListOps from the LRA TSV files: basic_{train,val,test}.tsv in `data_dir`.

Tokenized as LRA does (delete the parentheses, ']' becomes 'X', split on whitespace) into ids with
pad 0 and vocabulary 17 (15 token types, one never-used out-of-vocabulary id 16, and the pad),
truncated and right-padded to max_seq_len. The arrays are cached as .npy beside the data.
Without a data_dir and without `lra_release/listops-1000`, the full set is generated once.
"""
from pathlib import Path

import numpy as np

from utils import ROOT, UserError, cached_arrays

SPLITS = {'train': 'basic_train.tsv', 'valid': 'basic_val.tsv', 'test': 'basic_test.tsv'}
HEADER = 'Source\tTarget'
# LRA builds its vocabulary in hash order, which no run can reproduce; any fixed mapping is as good.
TOKENS = ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9', '[MIN', '[MAX', '[MED', '[SM', 'X']
VOCAB = {token: i + 1 for i, token in enumerate(TOKENS)}  # 0 = padding
OOV_ID = len(TOKENS) + 1  # 16: reserved as in LRA, never produced here (unknown tokens are an error)
VOCAB_SIZE = len(TOKENS) + 2  # 17
NUM_CLASSES = 10
LRA_DIR = ROOT / 'lra_release' / 'listops-1000'
GENERATED_DIR = ROOT / 'data' / 'listops-1000'
CACHE_VERSION = 1  # raise when read_tsv changes what it caches


def tokenize(expression):
    """An expression string -> list of token ids (no truncation, no padding)."""
    tokens = expression.replace('(', '').replace(')', '').replace(']', 'X').split()
    return [VOCAB[token] for token in tokens]


def pad(ids, max_seq_len):
    """Token ids -> (max_seq_len,) uint8: the first max_seq_len ids, right-padded with 0."""
    row = np.zeros(max_seq_len, dtype=np.uint8)
    row[:min(len(ids), max_seq_len)] = ids[:max_seq_len]
    return row


def encode(expressions, max_seq_len):
    """Expressions -> (N, max_seq_len) uint8 ids."""
    return np.stack([pad(tokenize(expression), max_seq_len) for expression in expressions])


def read_tsv(path, max_seq_len):
    """One split file -> (inputs (N, max_seq_len) uint8, targets (N,) int32). A malformed row stops with
    the file name and line number."""
    inputs, targets = [], []
    try:
        with open(path, 'rb') as f:
            for number, raw in enumerate(f, start=1):
                line = decode_line(path, number, raw)
                if number == 1:
                    if line != HEADER:
                        raise UserError(f'{path}:1: expected the header {HEADER!r}, found {line[:40]!r}: '
                                        f'not a ListOps TSV file')
                elif line:
                    target, tokens = parse_row(path, number, line)
                    inputs.append(pad(tokens, max_seq_len))
                    targets.append(target)
    except OSError as error:
        raise UserError(f'cannot read {path} ({error.strerror or error}): check the file and its permissions') from None
    if not targets:
        raise UserError(f'{path} has no examples')
    return np.stack(inputs), np.asarray(targets, dtype=np.int32)


def decode_line(path, number, raw):
    """A line's bytes -> its text without the line ending; binary or non-UTF-8 data stops with file:line."""
    try:
        line = raw.decode('utf-8').rstrip('\r\n')
    except UnicodeDecodeError as error:
        raise UserError(f'{path}:{number}: not UTF-8 text (byte {raw[error.start]:#04x} at column {error.start + 1}): '
                        f'the LRA ListOps files are text; is this the right file?') from None
    if '\0' in line:
        raise UserError(f'{path}:{number}: a NUL byte: this is a binary file, not a ListOps TSV file')
    return line


def parse_row(path, number, line):
    """'expression<TAB>target' -> (target, token ids)."""
    fields = line.split('\t')
    try:
        if len(fields) != 2:
            raise ValueError(f'{len(fields)} tab-separated fields instead of 2 (Source, Target)')
        target = int(fields[1])
        if not 0 <= target < NUM_CLASSES:
            raise ValueError(f'target {target} is not a digit 0-9')
        return target, tokenize(fields[0])
    except KeyError as error:
        raise UserError(f'{path}:{number}: unknown token {error.args[0]!r} in the expression') from None
    except ValueError as error:
        raise UserError(f'{path}:{number}: malformed row: {error}') from None


def load_split(path, max_seq_len):
    """A split's arrays from the .npy cache beside `path`, (re)built when the file or the length changed."""
    def build():
        inputs, targets = read_tsv(path, max_seq_len)
        return {'inputs': inputs, 'targets': targets}
    return cached_arrays(path.with_name(f'{path.stem}.T{max_seq_len}'), ('inputs', 'targets'), build,
                         f'tokenizing {path}', settings={'max_seq_len': max_seq_len, 'loader': CACHE_VERSION},
                         sources=[path])


def default_data_dir():
    """The LRA release when it is there, else the generated set (made once, the first time)."""
    if all((LRA_DIR / name).exists() for name in SPLITS.values()):
        return LRA_DIR
    if not all((GENERATED_DIR / name).exists() for name in SPLITS.values()):
        from listops.generate import write_dataset
        print(f'no LRA ListOps data in {LRA_DIR}: generating the full LRA-sized set (96,000 / 2,000 / 2,000) '
              f'once into {GENERATED_DIR} (a few minutes) ...', flush=True)
        try:
            write_dataset(GENERATED_DIR)
        except OSError as error:
            raise UserError(f'cannot generate ListOps data into {GENERATED_DIR} ({error}); '
                            f'pass --data_dir=DIR with the LRA files basic_train.tsv, basic_val.tsv, basic_test.tsv') from None
    return GENERATED_DIR


def load_dataset(config):
    """(train, valid, test) dicts of numpy arrays: 'inputs' (N, max_seq_len) uint8 ids, 'targets' (N,) int32."""
    data_dir = default_data_dir() if config.data_dir is None else Path(config.data_dir).expanduser().resolve()
    missing = [name for name in SPLITS.values() if not (data_dir / name).is_file()]
    if missing:
        raise UserError(f'{data_dir} lacks {", ".join(missing)}: point --data_dir at the LRA folder '
                        f'lra_release/listops-1000, or make one with python listops/generate.py --output_dir {data_dir}')
    return tuple(load_split(data_dir / SPLITS[split], config.max_seq_len) for split in ('train', 'valid', 'test'))
