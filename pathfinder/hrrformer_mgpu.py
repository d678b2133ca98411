"""Pathfinder (LRA): are two markers joined by one dashed path? 32x32 images read as 1024 pixels;
with --resolution=128, Path-X: 128x128 images, 16384 pixels.

Paper (test accuracy, 20 epochs): Pathfinder-32 72.17% with 2 layers, 70.71% with 1 layer
(Transformer 71.40%, 200 epochs). Run from the repository root or from inside pathfinder/:

    python pathfinder/hrrformer_mgpu.py [--name=value ...]        Pathfinder-32
    python pathfinder/hrrformer_mgpu.py --resolution=128 [...]    Path-X

Data: the LRA release's lra_release/lra_release/pathfinder{32,128} (difficulty hard, as LRA) when
present; otherwise generate_count images are generated once into data/pathfinder
(pathfinder/generate.py), so the script runs out of the box. Any field below can be overridden.
"""
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, from anywhere

from pathfinder.dataset import NUM_CLASSES, VOCAB_SIZE, load_dataset  # noqa: E402
from trainer import Config, main  # noqa: E402


@dataclasses.dataclass(frozen=True)
class PathfinderConfig(Config):
    resolution: int = 32              # 32 (Pathfinder) or 128 (Path-X); max_seq_len = resolution ** 2
    difficulty: str = 'hard'          # easy, intermediate or hard (LRA: hard)
    generate_count: int = 200_000     # images to generate when there is no LRA data


pathfinder32 = PathfinderConfig(
    task='pathfinder',
    resolution=32,
    vocab_size=VOCAB_SIZE,      # pixel values
    num_classes=NUM_CLASSES,
    max_seq_len=32 * 32,
    n_layer=2,                  # 1 for the paper's single-layer result
    embed_size=1024,
    heads=8,
    mlp_ratio=0.25,             # MLP hidden = E/4
    block='D',                  # x + Attn(x); x + MLP(LN(x)); no LayerNorm after the embedding
    positions='learned',
    use_mask=False,             # 0 is a black pixel, not padding
    dropout_rate=0.1,
    batch_size=8,               # per device
    epochs=20,
    lr=1e-3,
    lr_decay=0.95,              # per decay_examples examples trained on
    decay_examples=179_968,     # 160,000 + 19,968: the original's Pathfinder and Path-X scripts
    optimizer='adam',
    seed=0,
)

pathx = dataclasses.replace(
    pathfinder32,
    task='pathx',
    resolution=128,
    max_seq_len=128 * 128,
    n_layer=1,
    batch_size=16,              # per device
    optimizer='adamw',
    weight_decay=5e-4,
)


def config_for(argv):
    """Path-X's configuration when --resolution=128 is asked for, else Pathfinder-32's."""
    return pathx if '--resolution=128' in argv else pathfinder32


if __name__ == '__main__':
    main(config_for(sys.argv[1:]), load_dataset)
