"""Text (LRA): sentiment of IMDB movie reviews read byte by byte, up to 4000 bytes.

Paper (test accuracy, 20 epochs): Hrrformer 65.38% with 6 layers, 66.50% with 1 layer
(Transformer 64.27%, 200 epochs). Run from the repository root or from inside text/:

    python text/hrrformer_mgpu.py [--name=value ...]      e.g. --n_layer=1 --epochs=2

Data: tensorflow-datasets imdb_reviews, downloaded and prepared once into data/tensorflow_datasets,
then cached as .npy; later runs do not import TensorFlow. Any field below can be overridden.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, from anywhere

from text.dataset import NUM_CLASSES, VOCAB_SIZE, load_dataset  # noqa: E402
from trainer import Config, main  # noqa: E402

config = Config(
    task='text',
    vocab_size=VOCAB_SIZE,      # byte + 1, pad 0
    num_classes=NUM_CLASSES,
    max_seq_len=4000,
    n_layer=6,                  # 1 for the paper's single-layer result
    embed_size=512,
    heads=8,
    mlp_ratio=2.0,              # MLP hidden = 2E
    block='B',                  # pre-LN: x + Attn(LN(x)); x + MLP(LN(x))
    positions='fixed',          # sinusoid table
    use_mask=True,
    dropout_rate=0.1,
    batch_size=2,               # per device
    epochs=20,
    lr=1e-3,
    lr_decay=0.9,               # per decay_examples examples trained on
    decay_examples=50_000,      # the original's Text script (twice the 25,000 training reviews)
    optimizer='adam',
    seed=0,
)

if __name__ == '__main__':
    main(config, load_dataset)
