"""Learning 2D structure from 1D (the paper's weight maps): each head's attention weights over the
pixels of an Image or Pathfinder test example, reshaped to the image, beside the image.

    python benchmarks/visualize.py --workdir=weights/image_3 [--examples=4] [--layer=0] [--output=FILE.png]

The run's configuration comes from its newest checkpoint; its test split is loaded as for training.
"""
import dataclasses
import importlib
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import trainer  # noqa: E402
import utils  # noqa: E402
from hrrformer import build_model  # noqa: E402
from utils import UserError  # noqa: E402

TASKS = {'image': ('image.hrrformer_mgpu', 'config'), 'pathfinder': ('pathfinder.hrrformer_mgpu', 'pathfinder32'),
         'pathx': ('pathfinder.hrrformer_mgpu', 'pathx')}


def restore_run(workdir):
    """(config, params, load_dataset) of the newest checkpoint in a run folder."""
    checkpoints = Path(workdir) / 'checkpoints'
    meta = trainer.latest_meta(checkpoints)
    if meta is None:
        raise UserError(f'no checkpoint in {checkpoints}: train an Image or Pathfinder model first')
    task = meta['config']['task']
    if task not in TASKS:
        raise UserError(f'{workdir} is a {task} run; weight maps are for image, pathfinder or pathx runs')
    module = importlib.import_module(TASKS[task][0])
    config = dataclasses.replace(getattr(module, TASKS[task][1]), **meta['config'])
    model = build_model(config)
    example = {'inputs': np.zeros((1, config.max_seq_len), np.int32), 'targets': np.zeros(1, np.int32)}
    state, _ = trainer.init_state(config, model, example, steps_per_decay=1)
    tree, _ = trainer.restore_latest(checkpoints, trainer.state_to_tree(state, jax.random.PRNGKey(0)))
    return config, tree['params'], module.load_dataset


def attention_maps(config, params, images, layer=0):
    """(N, h, side, side) softmax weights of every head of one layer for N flattened images (N, T)."""
    model = build_model(config)
    _, variables = model.apply({'params': params}, images, mutable=['intermediates'])
    weights = variables['intermediates']['encoder'][f'EncoderBlock_{layer}']['SelfAttention_0']['weights'][0]
    side = int(math.isqrt(config.max_seq_len))
    return np.asarray(weights).reshape(len(images), -1, side, side)


def draw(images, maps, labels, path):
    """A grid: one row per example, the image and then one weight map per head."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    n, heads = maps.shape[:2]
    fig, axes = plt.subplots(n, heads + 1, figsize=(1.6 * (heads + 1), 1.6 * n), squeeze=False)
    for row in range(n):
        axes[row, 0].imshow(images[row], cmap='gray')
        axes[row, 0].set_title(f'input (label {labels[row]})', fontsize=7)
        for head in range(heads):
            axes[row, head + 1].imshow(maps[row, head], cmap='viridis')
            axes[row, head + 1].set_title(f'head {head + 1}', fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv):
    options = {'workdir': None, 'examples': '4', 'layer': '0', 'output': None}
    for arg in argv:
        name, _, value = arg[2:].partition('=')
        if not arg.startswith('--') or name not in options or not value:
            raise SystemExit(f'error: cannot read {arg!r}; usage: python benchmarks/visualize.py --workdir=RUN '
                             f'[--examples=4] [--layer=0] [--output=FILE.png]')
        options[name] = value
    if options['workdir'] is None:
        raise SystemExit('error: --workdir=RUN is needed (a run folder of an Image or Pathfinder model)')
    config, params, load_dataset = restore_run(options['workdir'])
    test = trainer.as_split(load_dataset(config)[2])
    batch = next(test.batches([np.arange(min(int(options['examples']), len(test)))]))
    maps = attention_maps(config, params, batch['inputs'].astype(np.int32), int(options['layer']))
    side = maps.shape[-1]
    output = Path(options['output'] or Path(options['workdir']) / 'weight_maps.png')
    draw(batch['inputs'].reshape(-1, side, side), maps, batch['targets'], output)
    print(f'wrote {output}: {maps.shape[0]} examples x {maps.shape[1]} heads, layer {options["layer"]}')


if __name__ == '__main__':
    utils.exit_on_user_error(lambda: main(sys.argv[1:]))
