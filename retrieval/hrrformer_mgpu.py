"""Retrieval (LRA): whether two ACL papers are linked by a citation, each read as up to 4000 bytes.

Paper (test accuracy, 20 epochs): Hrrformer 76.15% with 4 layers, 75.40% with 1 layer
(Transformer 57.46%, 200 epochs). Both documents go through one shared embedding and encoder
(two towers, one set of weights); the head reads [m1, m2, m1*m2, m1-m2]. Run from the repository
root or from inside retrieval/:

    python retrieval/hrrformer_mgpu.py [--name=value ...]      e.g. --n_layer=1 --epochs=2

Data: the AAN pairs of the LRA release, lra_release/lra_release/tsv_data/new_aan_pairs.*.tsv
(download lra_release.gz from the Long Range Arena repository and unpack it in the repository
root), cached as .npy on first use. Any field below can be overridden.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, from anywhere

from retrieval.dataset import NUM_CLASSES, VOCAB_SIZE, load_dataset  # noqa: E402
from trainer import Config, main  # noqa: E402

config = Config(
    task='retrieval',
    vocab_size=VOCAB_SIZE,      # byte + 1, pad 0
    num_classes=NUM_CLASSES,
    max_seq_len=4000,           # per document
    n_layer=4,                  # 1 for the paper's single-layer result
    embed_size=128,
    heads=4,
    mlp_ratio=0.5,              # MLP hidden = E/2
    block='A',                  # LayerNorm after the embedding; x + Attn(x); x + MLP(LN(x))
    positions='fixed',          # sinusoid table
    use_mask=True,
    head='dual',                # two towers sharing their weights
    dropout_rate=0.1,
    batch_size=4,               # per device
    epochs=20,
    lr=1e-3,
    lr_decay=0.9,               # per decay_examples examples trained on
    decay_examples=164_480,     # 147,072 + 17,408: the original's Retrieval script
    optimizer='adam',
    seed=0,
)

if __name__ == '__main__':
    main(config, load_dataset)
