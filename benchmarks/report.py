"""The reproduction beside the paper: every run under weights/ in the LRA table, and its curves.

    python benchmarks/report.py [--weights=DIR] [--workdir=RUN ...] [--output=FILE.md]

A run is a folder with a history.csv: the default workdirs weights/<task>_<n_layer>[_seed<N>] and
weights/ember_T<T>[_seed<N>], or any folder given with --workdir. Its settings come from its newest
checkpoint (fields an older checkpoint lacks take the task script's values); without a checkpoint,
from the folder name, and the run is then shown apart, since nothing says it used the paper's
settings. A run is scored by its test accuracy at the epoch of best validation accuracy.

Runs that differ only in their seed form one group: its cell shows the mean +- sample standard
deviation over the seeds and their number. Groups with the paper's configuration (the task script's
Config; 1 layer or the paper's number) fill the LRA table: one-layer runs the single-layer row, more
layers the multi-layer row, softmax runs a Transformer row. Every other group (fewer layers, another
width, a subset of the examples, another learning rate, ...) is listed apart with what differs.
"gen" marks generated data (ListOps, Pathfinder or Path-X without the LRA release in lra_release/,
EMBER without --data_dir). Each run's training curves are drawn into its folder as curves.png.
"""
import dataclasses
import importlib
import json
import math
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import utils  # noqa: E402
from utils import UserError  # noqa: E402

LRA = ['listops', 'text', 'retrieval', 'image', 'pathfinder']
TITLES = {'listops': 'ListOps', 'text': 'Text', 'retrieval': 'Retrieval', 'image': 'Image', 'pathfinder': 'Pathfinder',
          'pathx': 'Path-X', 'ember': 'EMBER'}
PAPER = {  # test accuracy (%), paper Table 1
    'Transformer (LRA paper, 200 epochs)': [36.37, 64.27, 57.46, 42.44, 71.40],
    'Hrrformer, 1 layer (paper)': [38.79, 66.50, 75.40, 48.47, 70.71],
    'Hrrformer, multi-layer (paper)': [39.98, 65.38, 76.15, 50.45, 72.17],
}
OURS = ['Hrrformer, 1 layer (ours)', 'Hrrformer, multi-layer (ours)',
        'Transformer, 1 layer (ours)', 'Transformer, multi-layer (ours)']
PAPER_OTHER = {'ember': '91.03 (T = 16384)'}  # the paper gives no Path-X number
SCRIPTS = {'listops': ('listops.hrrformer_mgpu', 'config'), 'text': ('text.hrrformer_mgpu', 'config'),
           'retrieval': ('retrieval.hrrformer_mgpu', 'config'), 'image': ('image.hrrformer_mgpu', 'config'),
           'pathfinder': ('pathfinder.hrrformer_mgpu', 'pathfinder32'),
           'pathx': ('pathfinder.hrrformer_mgpu', 'pathx'), 'ember': ('ember.hrrformer_mgpu', 'config')}
# The settings that make a run the paper's (n_layer may also be 1; attention picks the row). A field
# that this code or an older checkpoint lacks counts as the paper's value.
COMPARED = ('vocab_size', 'num_classes', 'max_seq_len', 'n_layer', 'embed_size', 'heads', 'mlp_ratio', 'block',
            'positions', 'use_mask', 'head', 'use_bias', 'activation', 'cls_token', 'train_examples',
            'eval_examples', 'lr', 'lr_decay', 'end_lr', 'decay_examples', 'optimizer', 'weight_decay', 'loss',
            'label_smoothing', 'dropout_rate', 'dtype', 'difficulty')  # difficulty: Pathfinder's data
# Settings that do not change what a run learns: runs that differ only in these form one group.
UNGROUPED = ('seed', 'workdir', 'eval_only', 'max_minutes', 'checkpoint_minutes', 'coordinator_address',
             'num_processes', 'process_id', 'loader_workers')
FOLDER_NAME = re.compile(r'(?P<task>[a-z]+)_(?:(?P<layers>\d+)|T(?P<length>\d+))(?:_seed(?P<seed>\d+))?')


# ----------------------------------------------------------------------------- settings of a run

def paper_config(task):
    """The task script's Config (the paper's settings), or None for a task without a script."""
    if task not in SCRIPTS:
        return None
    module, name = SCRIPTS[task]
    return getattr(importlib.import_module(module), name)


def config_of(saved):
    """A run's Config from the dict in its checkpoint: fields the checkpoint lacks (written by older code)
    take the task script's values; fields this code no longer has are dropped. None for an unknown task."""
    paper = paper_config(saved.get('task'))
    if paper is None:
        return None
    known = {f.name for f in dataclasses.fields(paper)}
    return dataclasses.replace(paper, **{name: value for name, value in saved.items() if name in known})


def saved_meta(folder):
    """The metadata ({'epoch', 'config'}) of the newest readable checkpoint of a run, or None. Read as JSON
    (the orbax layout checkpoints/<step>/meta/metadata), so no checkpoint library is loaded."""
    steps = [p for p in (Path(folder) / 'checkpoints').glob('*') if p.name.isdigit()]  # not orbax's tmp folders
    for step in sorted(steps, key=lambda p: int(p.name), reverse=True):
        try:
            meta = json.loads((step / 'meta' / 'metadata').read_text())
            if isinstance(meta.get('config'), dict):
                return meta
        except (OSError, ValueError):
            continue
    return None


def run_settings(folder):
    """(settings dict, note) of a run: from its checkpoint; else from its folder name, with a note."""
    meta = saved_meta(folder)
    if meta is not None:
        config = config_of(meta['config'])
        if config is None:
            return dict(meta['config']), f"no paper configuration for task {meta['config'].get('task')!r}"
        return dataclasses.asdict(config), None
    match = FOLDER_NAME.fullmatch(Path(folder).name)
    paper = paper_config(match['task']) if match else None
    if paper is None:
        return {'task': None}, 'no checkpoint, and the folder name names no task'
    changes = {'seed': int(match['seed'] or 0)}
    changes.update({'n_layer': int(match['layers'])} if match['layers'] else {'max_seq_len': int(match['length'])})
    return dataclasses.asdict(dataclasses.replace(paper, **changes)), \
        'no checkpoint: settings unknown (the model and seed shown are read from the folder name)'


def show(value):
    """A setting as the report writes it: None (all examples, no limit) as 'all', 0.001 as 0.001."""
    if value is None:
        return 'all'
    return f'{value:g}' if isinstance(value, float) else str(value)


def differences(settings, reference, fields, label='paper'):
    """'name=value (paper: value)' for each of `fields` where `settings` differs from `reference`;
    a field missing from either counts as equal."""
    return [f'{name}={show(settings[name])} ({label}: {show(reference[name])})' for name in fields
            if name in settings and name in reference and settings[name] != reference[name]]


def paper_differences(settings):
    """How a run's settings differ from its task's paper configuration (n_layer 1 is the paper's too)."""
    paper = paper_config(settings.get('task'))
    if paper is None:
        return []
    reference = dataclasses.asdict(paper)
    if settings.get('n_layer') == 1:
        reference['n_layer'] = 1
    return differences(settings, reference, COMPARED)


def generated(config):
    """Did this run train on generated data?"""
    if config.get('data_dir'):
        return False
    release = utils.ROOT / 'lra_release'
    return {'listops': not (release / 'listops-1000').is_dir(),
            'pathfinder': not (release / 'lra_release' / f"pathfinder{config.get('resolution', 32)}").is_dir(),
            'pathx': not (release / 'lra_release' / 'pathfinder128').is_dir(),
            'ember': True}.get(config.get('task'), False)


# ----------------------------------------------------------------------------- runs and groups

def number(row, key):
    """A finite float from a history cell, or None (a column older runs lack, an empty cell, NaN)."""
    try:
        value = float(row.get(key) or 'nan')
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def summarise(rows):
    """(test accuracy at the best validation epoch, at the last epoch, epochs, the best epoch) of a
    history, or None when no epoch has both accuracies."""
    scored = [r for r in rows if number(r, 'valid_acc') is not None and number(r, 'test_acc') is not None]
    if not scored:
        return None
    best = max(scored, key=lambda r: number(r, 'valid_acc'))  # the first of equals: the earliest epoch
    return number(best, 'test_acc'), number(scored[-1], 'test_acc'), len(rows), int(best['epoch'])


def collect(folders):
    """Every run among `folders` that has a history: its folder, settings, note, summary and rows."""
    runs = []
    for folder in folders:
        rows = utils.read_history(Path(folder) / 'history.csv')
        if rows:
            settings, note = run_settings(folder)
            runs.append({'folder': Path(folder), 'settings': settings, 'note': note, 'rows': rows,
                         'summary': summarise(rows), 'generated': generated(settings)})
    return runs


def group(runs):
    """Runs that differ only in UNGROUPED settings (the seed, the workdir, ...), as lists, in first-seen order."""
    groups = {}
    for run in runs:
        key = json.dumps({k: v for k, v in run['settings'].items() if k not in UNGROUPED}, sort_keys=True, default=str)
        groups.setdefault((key, run['note']), []).append(run)
    return list(groups.values())


def row_of(settings):
    model = 'Transformer' if settings.get('attention') == 'softmax' else 'Hrrformer'
    return f"{model}, {'1 layer' if settings.get('n_layer') == 1 else 'multi-layer'} (ours)"


def score(runs):
    """(mean, sample std or None, count) of the best-validation test accuracies of a group's scored runs."""
    values = [run['summary'][0] for run in runs if run['summary']]
    if not values:
        return None, None, 0
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None, len(values)


def cell(runs):
    """One group's result: 'best / last (E ep)' for one run, 'mean ± std (n seeds, E ep)' for several."""
    scored = [run for run in runs if run['summary']]
    if not scored:
        return 'no accuracy recorded'
    epochs = sorted({run['summary'][2] for run in scored})
    span = f'{epochs[0]}' if len(epochs) == 1 else f'{epochs[0]}-{epochs[-1]}'
    gen = ', gen' if runs[0]['generated'] else ''
    if len(scored) == 1:
        best, last = scored[0]['summary'][:2]
        return f'{best:.2f} / {last:.2f} ({span} ep{gen})'
    mean, std, n = score(scored)
    seeds = [run['settings'].get('seed') for run in scored]
    count = f'{n} seeds' if len(set(seeds)) == n else f"{n} runs, seeds {', '.join(map(str, seeds))}"
    return f'{mean:.2f} ± {std:.2f} ({count}, {span} ep{gen})'


def place(groups):
    """({(row, task): group} of the LRA table, [(group, what differs)] shown apart, [group] of other tasks).
    Where several paper-configuration groups fall into one cell, the one with the most runs (then epochs)
    takes it and the others are shown apart with what differs from it."""
    table, apart, others = {}, [], []
    for runs in sorted(groups, key=lambda g: (-len(g), -max(r['summary'][2] if r['summary'] else 0 for r in g))):
        settings = runs[0]['settings']
        differs = ([runs[0]['note']] if runs[0]['note'] else []) + paper_differences(settings)
        where = (row_of(settings), settings.get('task'))
        if differs:
            apart.append((runs, differs))
        elif settings.get('task') not in LRA:
            others.append(runs)
        elif where in table:
            shown = table[where][0]['settings']
            fields = [k for k in sorted(set(settings) | set(shown)) if k not in UNGROUPED]
            apart.append((runs, ["the paper's configuration, but another group fills its cell; differs from it in "
                                 + ', '.join(differences(settings, shown, fields, 'that group'))]))
        else:
            table[where] = runs
    return table, apart, others


# ----------------------------------------------------------------------------- the report

def folders_of(runs):
    return ', '.join(run['folder'].name for run in runs)


def describe(settings):
    """'Hrrformer, 6 layers' or 'Transformer, 1 layer' from a run's settings."""
    layers = settings.get('n_layer')
    model = 'Transformer' if settings.get('attention') == 'softmax' else 'Hrrformer'
    return f"{model}, {layers} layer{'' if layers == 1 else 's'}" if layers else model


def lra_table(table):
    """The LRA table as Markdown lines: the paper's rows, then ours (only rows with a run)."""
    lines = ['| model | ' + ' | '.join(TITLES[t] for t in LRA) + ' | Avg |', '|---' * (len(LRA) + 2) + '|']
    for name, values in PAPER.items():
        lines.append(f'| {name} | ' + ' | '.join(f'{v:.2f}' for v in values) + f' | {sum(values) / len(values):.2f} |')
    for name in OURS:
        cells = [table.get((name, task)) for task in LRA]
        if any(cells):
            means = [score(runs)[0] for runs in cells if runs]
            done = len(means) == len(LRA) and None not in means
            average = f'{sum(means) / len(means):.2f}' if done else '-'
            lines.append(f'| {name} | ' + ' | '.join(cell(runs) if runs else '-' for runs in cells) + f' | {average} |')
    return lines


def report_lines(runs):
    """report.md as lines."""
    table, apart, others = place(group(runs))
    lines = ['# Reproduction report', '',
             'Test accuracy (%) at the epoch of best validation accuracy. One run: that / the test accuracy at '
             'the last epoch (epochs trained). Several seeds: mean ± sample standard deviation over the seeds '
             '(their number, epochs). "gen": trained on generated data, not the LRA release.', '',
             '## Long Range Arena, paper configuration', ''] + lra_table(table)
    if table:
        lines += ['', 'Run folders:'] + [f'- {name}, {TITLES[task]}: {folders_of(runs)}'
                                         for (name, task), runs in sorted(table.items())]
    if others:
        lines += ['', '## Path-X and EMBER, paper configuration', '', '| task | model | ours | paper | runs |',
                  '|---|---|---|---|---|']
        lines += [f"| {TITLES[runs[0]['settings']['task']]} | {describe(runs[0]['settings'])} | {cell(runs)} | "
                  f"{PAPER_OTHER.get(runs[0]['settings']['task'], '-')} | {folders_of(runs)} |" for runs in others]
    if apart:
        lines += ['', "## Runs that differ from the paper's configuration (not comparable with its table)", '',
                  '| task | model | ours | differs from the paper in | runs |', '|---|---|---|---|---|']
        lines += [f"| {TITLES.get(runs[0]['settings'].get('task'), runs[0]['settings'].get('task') or '?')} | "
                  f"{describe(runs[0]['settings'])} | {cell(runs)} | {'; '.join(differs)} | {folders_of(runs)} |"
                  for runs, differs in apart]
    return lines


def plot_curves(run, path=None):
    """Training loss and accuracies against the epoch, saved as `path` (default: curves.png in the run's
    folder). Epoch ticks are whole numbers; the loss axis starts at 0 and the accuracy axis spans at
    least 10 points, so that noise does not look like learning. Returns the (closed) Figure."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    rows, settings = run['rows'], run['settings']
    epochs = [int(r['epoch']) for r in rows]
    fig, (loss, accuracy) = plt.subplots(1, 2, figsize=(10, 3.6))
    losses = [number(r, 'train_loss') for r in rows]
    loss.plot(epochs, [math.nan if v is None else v for v in losses], 'o-')
    loss.set_ylim(0, 1.05 * max([v for v in losses if v is not None] or [1]))
    loss.set_ylabel('training loss')
    shown = []
    for key, label in (('train_acc', 'train'), ('valid_acc', 'validation'), ('test_acc', 'test')):
        values = [number(r, key) for r in rows]
        shown += [v for v in values if v is not None]
        accuracy.plot(epochs, [math.nan if v is None else v for v in values], 'o-', label=label)
    low, high = min(shown or [0]), max(shown or [100])
    pad = max(0., 10. - (high - low)) / 2 + 1
    accuracy.set_ylim(max(0., low - pad), min(100., high + pad))
    accuracy.set_ylabel('accuracy (%)')
    if run['summary']:  # the epoch whose test accuracy the report shows
        accuracy.axvline(run['summary'][3], color='gray', linestyle=':', label='best validation')
    accuracy.legend()
    for ax in (loss, accuracy):
        ax.set_xlabel('epoch')
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.ticklabel_format(axis='y', useOffset=False)
    task = settings.get('task') or 'unknown task'
    fig.suptitle(f"{run['folder'].name}: {TITLES.get(task, task)}, "
                 f"{describe(settings)}, seed {settings.get('seed', '?')}")
    fig.tight_layout()
    fig.savefig(path or run['folder'] / 'curves.png', dpi=100)
    plt.close(fig)
    return fig


def parse(argv):
    parser = utils.OneLineParser(
        prog='benchmarks/report.py',
        description="The LRA table of your runs beside the paper's, runs with other settings apart, "
                    "mean ± std over seeds; writes report.md and each run's curves.png.")
    parser.add_argument('--weights', type=Path, default=utils.ROOT / 'weights', metavar='DIR',
                        help='folder (a path) whose subfolders with a history.csv are the runs to report '
                             '(default: weights/ in the repository)')
    parser.add_argument('--workdir', type=Path, action='append', default=[], metavar='RUN',
                        help='a run folder (a path) outside --weights to report as well; may be given '
                             'several times (default: none)')
    parser.add_argument('--output', type=Path, default=None, metavar='FILE',
                        help='the Markdown file (a path) to write (default: report.md in --weights)')
    return parser.parse_args(argv)


def main(argv):
    args = parse(argv)
    weights = args.weights.expanduser().resolve()
    extra = [folder.expanduser().resolve() for folder in args.workdir]
    for folder in extra:
        if not (folder / 'history.csv').is_file():
            raise UserError(f'--workdir={folder} has no history.csv: pass the folder of a run (its --workdir)')
    if not weights.is_dir() and not extra:
        raise UserError(f'no folder {weights}: train a task first (e.g. python listops/hrrformer_mgpu.py) '
                        f'or pass --weights=DIR')
    found = sorted(history.parent for history in weights.glob('*/history.csv'))
    runs = collect(found + [folder for folder in extra if folder not in found])
    if not runs:
        raise UserError(f'no run in {weights} (a run folder holds a history.csv): train a task first '
                        f'(e.g. python listops/hrrformer_mgpu.py), or pass --weights=DIR or --workdir=RUN')
    text = '\n'.join(report_lines(runs)) + '\n'
    print(text)
    output = (args.output.expanduser().resolve() if args.output else weights / 'report.md')
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    for run in runs:
        plot_curves(run)
    print(f'wrote {output} and curves.png in {len(runs)} run folder(s)')


if __name__ == '__main__':
    utils.exit_on_user_error(lambda: main(sys.argv[1:]))
