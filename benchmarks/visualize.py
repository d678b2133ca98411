"""Learning 2D structure from 1D (the paper's weight maps): each head's attention weights over the
pixels of an Image or Pathfinder test example, reshaped to the image, beside the image.

    python benchmarks/visualize.py --workdir=weights/image_3 [--examples=4] [--layer=0] [--output=FILE.png]

The run folder alone is enough: the model's settings come from its newest checkpoint (fields an older
checkpoint lacks take the task script's values), and its test split is loaded as for training.
"""
import dataclasses
import importlib
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # report.py, beside this file

import jax  # noqa: E402
import numpy as np  # noqa: E402

import report  # noqa: E402
import trainer  # noqa: E402
import utils  # noqa: E402
from hrrformer import build_model  # noqa: E402
from utils import UserError  # noqa: E402

IMAGE_TASKS = ('image', 'pathfinder', 'pathx')


@dataclasses.dataclass
class Run:
    config: object          # the run's Config (the task script's dataclass)
    params: dict            # the model parameters of the newest checkpoint
    epoch: int              # the epoch that checkpoint ends
    load_dataset: object    # the task's load_dataset(config) -> (train, valid, test)


def restore_run(workdir):
    """The newest checkpoint of a run folder, with the settings saved in it. The one place where this
    script uses the trainer's checkpoint helpers."""
    workdir = Path(workdir).expanduser().resolve()
    checkpoints = workdir / 'checkpoints'
    meta = trainer.latest_meta(checkpoints)
    if meta is None:
        raise UserError(f'no checkpoint in {checkpoints}: pass the folder of a trained Image or Pathfinder run')
    task = meta['config'].get('task')
    if task not in IMAGE_TASKS:
        raise UserError(f'{workdir} is a {task} run; weight maps are drawn for image, pathfinder or pathx runs')
    if meta['config'].get('attention', 'hrr') != 'hrr':
        raise UserError(f"{workdir} is a {meta['config']['attention']} attention run; weight maps are drawn "
                        f"for HRR attention")
    config = dataclasses.replace(report.config_of(meta['config']), workdir=str(workdir))
    model = build_model(config)
    example = {'inputs': np.zeros((1, config.max_seq_len), np.int32), 'targets': np.zeros(1, np.int32)}
    state, _ = trainer.init_state(config, model, example, steps_per_decay=1)
    tree, meta = trainer.restore_latest(checkpoints, trainer.state_to_tree(state, jax.random.PRNGKey(0)))
    module = importlib.import_module(report.SCRIPTS[task][0])
    return Run(config, tree['params'], int(meta['epoch']), module.load_dataset)


def attention_maps(config, params, images, layer=0):
    """(N, h, side, side) softmax weights of every head of one layer for N flattened images (N, T)."""
    model = build_model(config)
    _, variables = model.apply({'params': params}, images, mutable=['intermediates'])
    weights = variables['intermediates']['encoder'][f'EncoderBlock_{layer}']['SelfAttention_0']['weights'][0]
    side = int(math.isqrt(config.max_seq_len))
    return np.asarray(weights).reshape(len(images), -1, side, side)


def draw(images, maps, labels, path, title):
    """A grid: one row per example, the image and then one weight map per head, each map with its own
    colour bar (heads differ in scale); `title` names the run. Returns the (closed) Figure."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    n, heads = maps.shape[:2]
    fig, axes = plt.subplots(n, heads + 1, figsize=(2.1 * (heads + 1), 1.8 * n + 0.5), squeeze=False)
    for row in range(n):
        axes[row, 0].imshow(images[row], cmap='gray')
        axes[row, 0].set_title(f'input (label {labels[row]})', fontsize=7)
        for head in range(heads):
            shown = axes[row, head + 1].imshow(maps[row, head], cmap='viridis')
            axes[row, head + 1].set_title(f'head {head + 1}', fontsize=7)
            bar = fig.colorbar(shown, ax=axes[row, head + 1], fraction=0.046, pad=0.03)
            bar.ax.tick_params(labelsize=5)
            bar.formatter.set_powerlimits((-2, 2))  # weights near 1/T read as 1e-3 multiples
            bar.ax.yaxis.get_offset_text().set_fontsize(5)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return fig


def parse(argv):
    parser = utils.OneLineParser(
        prog='benchmarks/visualize.py',
        description="Each attention head's weights over the pixels of test images (the paper's weight maps), "
                    "for a trained Image, Pathfinder or Path-X run; its settings come from its checkpoint.")
    parser.add_argument('--workdir', type=Path, required=True, metavar='RUN',
                        help='the run folder (a path; the --workdir it trained in, e.g. weights/image_3); required')
    parser.add_argument('--examples', type=utils.integer_at_least(1), default=4, metavar='N',
                        help='how many test images to draw, the first N of the test split (an integer; default: 4)')
    parser.add_argument('--layer', type=utils.integer_at_least(0), default=0, metavar='L',
                        help='whose attention: layer L, counted from 0 (an integer; default: 0, the first)')
    parser.add_argument('--output', type=Path, default=None, metavar='FILE',
                        help='the PNG file (a path) to write (default: weight_maps.png in the run folder)')
    return parser.parse_args(argv)


def main(argv):
    args = parse(argv)
    run = restore_run(args.workdir)
    config = run.config
    if args.layer >= config.n_layer:
        raise UserError(f'--layer={args.layer}, but the run has {config.n_layer} layer(s): pass 0 to '
                        f'{config.n_layer - 1}')
    test = trainer.as_split(run.load_dataset(config)[2])
    batch = next(test.batches([np.arange(min(args.examples, len(test)))]))
    maps = attention_maps(config, run.params, batch['inputs'].astype(np.int32), args.layer)
    side = maps.shape[-1]
    output = (args.output or Path(config.workdir) / 'weight_maps.png').expanduser().resolve()
    title = (f'{Path(config.workdir).name}: {report.TITLES[config.task]}, '
             f'--layer={args.layer} of {config.n_layer} layers, '
             f'{config.heads} heads, E {config.embed_size}, epoch {run.epoch}, seed {config.seed}')
    output.parent.mkdir(parents=True, exist_ok=True)
    draw(batch['inputs'].reshape(-1, side, side), maps, batch['targets'], output, title)
    print(f'wrote {output}: {title}; {maps.shape[0]} examples x {maps.shape[1]} heads')


if __name__ == '__main__':
    utils.exit_on_user_error(lambda: main(sys.argv[1:]))
