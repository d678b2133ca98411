"""The reproduction beside the paper: every run's history under weights/ in the LRA table, and curves.

    python benchmarks/report.py [--weights=weights] [--output=weights/report.md]

Each run folder weights/<task>_<n_layer>/ (the default workdirs) with a history.csv is one run;
its task, layers and attention come from its checkpoint's configuration (or, without one, from the
folder name). A cell shows the test accuracy at the epoch of best validation accuracy, then at the
last epoch, and the number of epochs. "gen" marks a run on generated data (ListOps, Pathfinder or
Path-X without the LRA release in lra_release/, EMBER without --data_dir). Runs with one layer fill
the single-layer row; more layers the multi-layer row; softmax runs the Transformer row. Each run's
training curves are drawn into its folder as curves.png.
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import utils  # noqa: E402

LRA = ['listops', 'text', 'retrieval', 'image', 'pathfinder']
TITLES = {'listops': 'ListOps', 'text': 'Text', 'retrieval': 'Retrieval', 'image': 'Image', 'pathfinder': 'Pathfinder'}
PAPER = {  # test accuracy (%), paper Table 1
    'Transformer (LRA paper, 200 epochs)': [36.37, 64.27, 57.46, 42.44, 71.40],
    'Hrrformer, 1 layer (paper)': [38.79, 66.50, 75.40, 48.47, 70.71],
    'Hrrformer, multi-layer (paper)': [39.98, 65.38, 76.15, 50.45, 72.17],
}


def run_config(folder):
    """The saved configuration of a run (its newest checkpoint's metadata), or what its name says."""
    steps = sorted((folder / 'checkpoints').glob('*/meta/metadata'), key=lambda p: int(p.parts[-3]), reverse=True)
    for meta in steps:
        try:
            return json.loads(meta.read_text())['config']
        except (OSError, ValueError, KeyError):
            continue
    task, _, layers = folder.name.rpartition('_')
    return {'task': task, 'n_layer': int(layers) if layers.isdigit() else 0, 'attention': 'hrr', 'data_dir': None}


def generated(config):
    """Did this run train on generated data?"""
    if config.get('data_dir'):
        return False
    release = utils.ROOT / 'lra_release'
    return {'listops': not (release / 'listops-1000').is_dir(),
            'pathfinder': not (release / 'lra_release' / f"pathfinder{config.get('resolution', 32)}").is_dir(),
            'pathx': not (release / 'lra_release' / 'pathfinder128').is_dir(),
            'ember': True}.get(config.get('task'), False)


def summarise(rows):
    """(test accuracy at the best validation epoch, at the last epoch, epochs) of a history."""
    best = max(rows, key=lambda r: float(r['valid_acc']))  # the first of equals: the earliest epoch
    return float(best['test_acc']), float(rows[-1]['test_acc']), len(rows)


def collect(weights):
    """Every run under `weights`: its folder, configuration, history summary and generated flag."""
    runs = []
    for history in sorted(Path(weights).glob('*/history.csv')):
        rows = utils.read_history(history)
        if rows:
            config = run_config(history.parent)
            runs.append({'folder': history.parent, 'config': config, 'summary': summarise(rows),
                         'generated': generated(config), 'rows': rows})
    return runs


def row_of(config):
    if config.get('attention', 'hrr') == 'softmax':
        return 'Transformer (ours)'
    return 'Hrrformer, 1 layer (ours)' if config.get('n_layer') == 1 else 'Hrrformer, multi-layer (ours)'


def table(runs):
    """The LRA table as Markdown lines: the paper's rows and ours."""
    ours = {}
    for run in runs:
        task = run['config'].get('task')
        if task in LRA:
            best, last, epochs = run['summary']
            cell = f"{best:.2f} / {last:.2f} ({epochs} ep{', gen' if run['generated'] else ''})"
            ours.setdefault(row_of(run['config']), {})[task] = (cell, best)
    lines = ['| model | ' + ' | '.join(TITLES[t] for t in LRA) + ' | Avg |', '|---' * (len(LRA) + 2) + '|']
    for name, values in PAPER.items():
        lines.append(f'| {name} | ' + ' | '.join(f'{v:.2f}' for v in values) + f' | {sum(values) / len(values):.2f} |')
    for name in ('Hrrformer, 1 layer (ours)', 'Hrrformer, multi-layer (ours)', 'Transformer (ours)'):
        if name in ours:
            cells = [ours[name].get(task, ('-', None)) for task in LRA]
            done = [best for _, best in cells if best is not None]
            average = f'{sum(done) / len(done):.2f}' if len(done) == len(LRA) else '-'
            lines.append(f'| {name} | ' + ' | '.join(cell for cell, _ in cells) + f' | {average} |')
    return lines


def plot_curves(run):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    rows = run['rows']
    epochs = [int(r['epoch']) for r in rows]
    fig, (loss, accuracy) = plt.subplots(1, 2, figsize=(10, 3.6))
    loss.plot(epochs, [float(r['train_loss']) for r in rows], 'o-')
    loss.set_xlabel('epoch')
    loss.set_ylabel('training loss')
    for key, label in (('train_acc', 'train'), ('valid_acc', 'validation'), ('test_acc', 'test')):
        accuracy.plot(epochs, [float(r[key]) for r in rows], 'o-', label=label)
    accuracy.set_xlabel('epoch')
    accuracy.set_ylabel('accuracy (%)')
    accuracy.legend()
    fig.suptitle(run['folder'].name)
    fig.tight_layout()
    fig.savefig(run['folder'] / 'curves.png', dpi=100)
    plt.close(fig)


def main(argv):
    weights, output = utils.ROOT / 'weights', None
    for arg in argv:
        name, _, value = arg.partition('=')
        if name == '--weights' and value:
            weights = Path(value).expanduser().resolve()
        elif name == '--output' and value:
            output = Path(value).expanduser().resolve()
        else:
            raise SystemExit(f'error: cannot read {arg!r}; usage: python benchmarks/report.py '
                             f'[--weights=DIR] [--output=FILE.md]')
    runs = collect(weights)
    lines = ['Test accuracy (%): ours at the epoch of best validation accuracy / at the last epoch.', ''] + table(runs)
    others = [run for run in runs if run['config'].get('task') not in LRA]
    if others:
        lines += ['', '| other run | test acc at best valid / last | epochs |', '|---|---|---|']
        lines += [f"| {run['folder'].name}{' (gen)' if run['generated'] else ''} | {run['summary'][0]:.2f} / "
                  f"{run['summary'][1]:.2f} | {run['summary'][2]} |" for run in others]
    text = '\n'.join(lines) + '\n'
    print(text)
    output = output or weights / 'report.md'
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    for run in runs:
        plot_curves(run)
    print(f'wrote {output} and curves.png in {len(runs)} run folder(s)')


if __name__ == '__main__':
    main(sys.argv[1:])
