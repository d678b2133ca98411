"""ListOps (LRA): 10-way classification of nested MIN/MAX/MED/SM expressions, up to 2000 tokens.

Paper (test accuracy, 20 epochs): Hrrformer 39.98% with 6 layers, 38.79% with 1 layer
(Transformer 36.37%, 200 epochs). Run from the repository root or from inside listops/:

    python listops/hrrformer_mgpu.py [--name=value ...]      e.g. --n_layer=1 --epochs=2

Data: lra_release/listops-1000 when present, otherwise a generated set of the same size and
distribution (made once into data/listops-1000). Any field below can be overridden.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, from anywhere

from listops.dataset import NUM_CLASSES, VOCAB_SIZE, load_dataset  # noqa: E402
from trainer import Config, main  # noqa: E402

config = Config(
    task='listops',
    vocab_size=VOCAB_SIZE,      # 15 token types + out-of-vocabulary + pad
    num_classes=NUM_CLASSES,
    max_seq_len=2000,
    n_layer=6,                  # 1 for the paper's single-layer result
    embed_size=512,
    heads=8,
    mlp_ratio=0.5,              # MLP hidden = E/2
    block='A',                  # LayerNorm after the embedding; x + Attn(x); x + MLP(LN(x))
    positions='learned',
    use_mask=True,
    dropout_rate=0.1,
    batch_size=2,               # per device
    epochs=20,
    lr=1e-3,
    lr_decay=0.9,               # per decay_examples examples trained on
    decay_examples=98_000,      # 96,000 + 2,000: the original's ListOps script
    optimizer='adam',
    seed=0,
)

if __name__ == '__main__':
    main(config, load_dataset)
