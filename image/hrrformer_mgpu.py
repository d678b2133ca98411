"""Image (LRA): CIFAR-10 classes from grayscale images read as sequences of 1024 pixels.

Paper (test accuracy, 20 epochs): Hrrformer 50.45% with 3 layers, 48.47% with 1 layer
(Transformer 42.44%, 200 epochs). Run from the repository root or from inside image/:

    python image/hrrformer_mgpu.py [--name=value ...]      e.g. --n_layer=1 --epochs=2

Data: tensorflow-datasets cifar10, downloaded and prepared once into data/tensorflow_datasets,
then cached as .npy; later runs do not import TensorFlow. Any field below can be overridden.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, from anywhere

from image.dataset import NUM_CLASSES, VOCAB_SIZE, load_dataset  # noqa: E402
from trainer import Config, main  # noqa: E402

config = Config(
    task='image',
    vocab_size=VOCAB_SIZE,      # gray values 0..255
    num_classes=NUM_CLASSES,
    max_seq_len=1024,           # 32 x 32 pixels
    n_layer=3,                  # 1 for the paper's single-layer result
    embed_size=256,
    heads=4,
    mlp_ratio=0.5,              # MLP hidden = E/2
    block='C',                  # post-LN: LN(x + Attn(x)); LN(x + MLP(x))
    positions='fixed',          # sinusoid table
    use_mask=False,             # 0 is a black pixel, not padding
    dropout_rate=0.1,
    batch_size=2,               # per device
    epochs=20,
    lr=1e-3,
    lr_decay=0.95,              # per decay_examples examples trained on
    decay_examples=60_000,      # 50,000 + 10,000: the original's Image script
    optimizer='adam',
    seed=0,
)

if __name__ == '__main__':
    main(config, load_dataset)
