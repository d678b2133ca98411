"""EMBER: malware or benign, from the raw bytes of whole executables, up to 2^17 bytes and beyond.

Paper: 91.03% accuracy at T = 16,384, the best of every model compared; softmax attention runs out
of memory long before 2^17. The real EMBER 2018 binaries are not distributed: bring your own
DATA/{train,test}/{benign,malware}/ (raw or gzip files, any nesting) as --data_dir=DATA. Without
it, a generated stand-in (ember/generate.py: a planted signature anywhere in the file, so reading
more bytes pays) is made once into data/ember. Run from the repository root or from inside ember/:

    python ember/hrrformer_mgpu.py [--name=value ...]       e.g. --max_seq_len=4096 --epochs=2

The per-device batch is max(2^(16 - log2 T), 1) unless --batch_size is given; runs go to
weights/ember_T<T> unless --workdir is given. Any field below can be overridden.
"""
import dataclasses
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, from anywhere

from ember.dataset import NUM_CLASSES, VOCAB_SIZE, check_valid_fraction, load_splits  # noqa: E402
from trainer import Config, main  # noqa: E402
from utils import ROOT  # noqa: E402

GENERATED_DIR = ROOT / 'data' / 'ember'


@dataclasses.dataclass(frozen=True)
class EmberConfig(Config):
    loader_workers: int = min(8, os.cpu_count() or 1)  # processes reading files (0: in this process)
    generate_count: int = 10_000      # files of the generated stand-in (train and test together)
    generate_length: int = 2 ** 17    # bytes per generated file
    valid_fraction: float = 0.1       # share of train held out (seeded) to validate each epoch; 0: train on
                                      # every training file and validate on test, as the original did


config = EmberConfig(
    task='ember',
    vocab_size=VOCAB_SIZE,      # byte + 1, pad 0
    num_classes=NUM_CLASSES,
    max_seq_len=2 ** 14,        # the paper's best; its sweep runs 2^8 ... 2^17 (ember/sweep.py)
    n_layer=1,
    embed_size=256,
    heads=8,
    mlp_ratio=2.0,              # FFN 512
    block='B',                  # pre-LN: x + Attn(LN(x)); x + MLP(LN(x))
    positions='learned',
    use_mask=True,
    use_bias=True,              # Dense layers with bias
    activation='relu',          # FFN and head
    cls_token=True,             # a learned CLS token in front; the head reads its output
    loss='binary_cross_entropy',
    label_smoothing=0.0,
    dropout_rate=0.1,
    batch_size=0,               # per device; 0: max(2^(16 - log2 T), 1)
    epochs=10,
    lr=1e-3,
    lr_decay=0.85,              # per decay_examples examples trained on
    decay_examples=800_000,     # the original's EMBER script
    optimizer='adam',
    seed=0,
)


def complete(config):
    """The length-dependent defaults: the batch and the workdir."""
    if config.batch_size == 0:
        config = dataclasses.replace(config, batch_size=max(2 ** int(16 - math.log2(config.max_seq_len)), 1))
    if config.workdir is None:
        name = f'ember_T{config.max_seq_len}' + (f'_seed{config.seed}' if config.seed else '')
        config = dataclasses.replace(config, workdir=str(ROOT / 'weights' / name))
    return config


def load_dataset(config):
    check_valid_fraction(config.valid_fraction)  # before minutes of generating a stand-in
    data_dir = Path(config.data_dir).expanduser().resolve() if config.data_dir else GENERATED_DIR
    if config.data_dir is None and not all((data_dir / split / 'signatures.csv').exists() for split in ('train', 'test')):
        from ember.generate import write_dataset
        print(f'no --data_dir: generating a stand-in of {config.generate_count} files of {config.generate_length} '
              f'bytes once into {data_dir} (ember/generate.py) ...', flush=True)
        write_dataset(data_dir, count=config.generate_count, length=config.generate_length, seed=0)
    return load_splits(data_dir, config.max_seq_len, config.loader_workers, config.valid_fraction)


if __name__ == '__main__':
    main(config, load_dataset, complete=complete)
