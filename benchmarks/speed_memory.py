"""Training speed and memory of Hrrformer against the softmax Transformer, side by side in one process.

    python benchmarks/speed_memory.py [--small] [--tasks=listops,text,...] [--length=T] [--repeats=N]
                                      [--sweep=9-17] [--memory_fraction=0.7] [--output_dir=benchmarks/results]

For each task's paper configuration (one device, the paper's per-device batch), one training step
of each model is compiled; examples per second are the batch over the median of interleaved timed
steps after a warm-up, and memory is the compiled step's memory analysis (temporary + arguments +
outputs). A step whose analysis says it needs more than --memory_fraction of the memory (the
accelerator's, or this machine's on CPU) is not run: it is reported as "would need N GB". Then a sequence-length sweep at the EMBER configuration (batch 1, T = 2^a ... 2^b; --sweep=none skips it).
--small shrinks every configuration (1 layer, embed 64, short sequences) to run in well under a
minute on a laptop CPU; --length sets T for every task (e.g. --length=4000).

Writes speed_memory.csv, speed_memory.md and speed_memory.png (x: examples per second, y: test
accuracy of the task's run in weights/ where its history exists, else the task; circle area: memory).
"""
import csv
import dataclasses
import importlib
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import trainer  # noqa: E402
import utils  # noqa: E402
from hrrformer import build_model  # noqa: E402

TASKS = {  # name: (module, attribute) of the task's paper configuration
    'listops': ('listops.hrrformer_mgpu', 'config'), 'text': ('text.hrrformer_mgpu', 'config'),
    'retrieval': ('retrieval.hrrformer_mgpu', 'config'), 'image': ('image.hrrformer_mgpu', 'config'),
    'pathfinder': ('pathfinder.hrrformer_mgpu', 'pathfinder32'), 'pathx': ('pathfinder.hrrformer_mgpu', 'pathx'),
    'ember': ('ember.hrrformer_mgpu', 'config'),
}
MODELS = ('hrr', 'softmax')
GB = 2 ** 30


def task_config(task, small, length):
    module, name = TASKS[task]
    config = getattr(importlib.import_module(module), name)
    if task == 'ember':
        config = importlib.import_module(module).complete(config)
    if small:
        config = dataclasses.replace(config, n_layer=1, embed_size=64, heads=4, max_seq_len=min(config.max_seq_len, 512),
                                     batch_size=min(config.batch_size, 4))
    if length:
        config = dataclasses.replace(config, max_seq_len=length)
    return dataclasses.replace(config, dropout_rate=0.0)


def memory_budget(device, fraction):
    """Bytes a step may use: a fraction of the accelerator's memory, or of this machine's on CPU."""
    stats = device.memory_stats() if device.platform != 'cpu' else None
    total = stats['bytes_limit'] if stats and 'bytes_limit' in stats else \
        os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
    return fraction * total


def prepare(config, attention, device):
    """A compiled one-device training step, its state and batch, and its memory analysis in bytes."""
    config = dataclasses.replace(config, attention=attention)
    rng = np.random.default_rng(0)
    names = ('inputs1', 'inputs2') if config.head == 'dual' else ('inputs',)
    batch = {name: rng.integers(1, config.vocab_size, size=(config.batch_size, config.max_seq_len)).astype(np.int32)
             for name in names}
    batch['targets'] = rng.integers(0, config.num_classes, size=config.batch_size)
    model = build_model(config)
    state, _ = trainer.init_state(config, model, batch, steps_per_decay=100)
    p_train, _ = trainer.compile_steps(config, model.apply, [device])
    state, batch, key = trainer.replicate(state, [device]), trainer.shard(batch, 1), jax.random.PRNGKey(0)
    analysis = p_train.lower(state, batch, key).compile().memory_analysis()
    needed = sum(getattr(analysis, field, 0) for field in
                 ('temp_size_in_bytes', 'argument_size_in_bytes', 'output_size_in_bytes')) if analysis else float('nan')
    return {'step': p_train, 'state': state, 'batch': batch, 'key': key, 'bytes': needed, 'config': config}


def measure(prepared, repeats):
    """Median seconds per step of each prepared model, timed in turn so both see the same machine."""
    runs = {name: p for name, p in prepared.items() if p.get('fits')}
    for p in runs.values():  # warm-up
        p['state'], metrics = p['step'](p['state'], p['batch'], p['key'])
        jax.block_until_ready(metrics)
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, p in runs.items():
            tic = time.perf_counter()
            p['state'], metrics = p['step'](p['state'], p['batch'], p['key'])
            jax.block_until_ready(metrics)
            times[name].append(time.perf_counter() - tic)
    return {name: float(np.median(t)) for name, t in times.items()}


def compare(label, config, device, repeats, fraction):
    """Rows for Hrrformer and the softmax Transformer at one configuration."""
    budget = memory_budget(device, fraction)
    prepared = {}
    for attention in MODELS:
        prepared[attention] = prepare(config, attention, device)
        prepared[attention]['fits'] = prepared[attention]['bytes'] < budget
    seconds = measure(prepared, repeats)
    rows = []
    for attention, p in prepared.items():
        row = {'task': label, 'model': 'Hrrformer' if attention == 'hrr' else 'Transformer',
               'length': config.max_seq_len, 'batch': config.batch_size, 'memory_gb': round(p['bytes'] / GB, 3)}
        if attention in seconds:
            row.update(status='ran', step_seconds=round(seconds[attention], 4),
                       examples_per_second=round(config.batch_size / seconds[attention], 2))
        else:
            row.update(status=f"would need {p['bytes'] / GB:.0f} GB")
        rows.append(row)
        print(f"{label:>12} {row['model']:>11} T={row['length']:<6} batch {row['batch']:<3} "
              f"{row.get('examples_per_second', '-'):>9} ex/s  {row['memory_gb']:9.3f} GB  {row['status']}", flush=True)
    return rows


def final_test_accuracy(task):
    """Test accuracy at the best validation epoch of weights/<task>_*/history.csv, if any run exists."""
    best = None
    for history in sorted((utils.ROOT / 'weights').glob(f'{task}_*/history.csv')):
        rows = utils.read_history(history)
        if rows:
            top = max(rows, key=lambda r: float(r['valid_acc']))
            best = max(best or 0, float(top['test_acc']))
    return best


def write_outputs(rows, output_dir, process_peak_gb):
    output_dir.mkdir(parents=True, exist_ok=True)
    fields = ['task', 'model', 'length', 'batch', 'status', 'step_seconds', 'examples_per_second', 'memory_gb']
    with open(output_dir / 'speed_memory.csv', 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval='')
        writer.writeheader()
        writer.writerows(rows)
    lines = [f'Measured with JAX {jax.__version__} on {jax.devices()[0].device_kind} (one device); '
             f'peak process memory {process_peak_gb:.1f} GB.', '',
             '| task | T | batch | Hrrformer ex/s | Transformer ex/s | speed-up | Hrrformer memory | '
             'Transformer memory | memory ratio |', '|---|---|---|---|---|---|---|---|---|']
    pairs = {}
    for row in rows:
        pairs.setdefault((row['task'], row['length']), {})[row['model']] = row
    for (task, length), pair in pairs.items():
        hrr, soft = pair['Hrrformer'], pair['Transformer']
        speed = (f"{hrr['examples_per_second'] / soft['examples_per_second']:.1f}x"
                 if 'examples_per_second' in soft and 'examples_per_second' in hrr else '-')
        lines.append(f"| {task} | {length} | {hrr['batch']} | {hrr.get('examples_per_second', hrr['status'])} | "
                     f"{soft.get('examples_per_second', soft['status'])} | {speed} | {hrr['memory_gb']:.2f} GB | "
                     f"{soft['memory_gb']:.2f} GB | {soft['memory_gb'] / max(hrr['memory_gb'], 1e-9):.1f}x |")
    (output_dir / 'speed_memory.md').write_text('\n'.join(lines) + '\n')
    plot(rows, output_dir / 'speed_memory.png')


def plot(rows, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    tasks = [row for row in rows if not row['task'].startswith('ember T=')]
    accuracy = {task: final_test_accuracy(task) for task in {row['task'] for row in tasks}}
    use_accuracy = any(value is not None for value in accuracy.values())
    names = sorted(accuracy)
    fig, ax = plt.subplots(figsize=(8, 5))
    largest = max([r['memory_gb'] for r in tasks] + [1e-9])
    for model, color in (('Hrrformer', 'tab:blue'), ('Transformer', 'tab:red')):
        ran = [r for r in tasks if r['model'] == model and 'examples_per_second' in r
               and (not use_accuracy or accuracy[r['task']] is not None)]
        y = [accuracy[r['task']] if use_accuracy else names.index(r['task']) for r in ran]
        ax.scatter([r['examples_per_second'] for r in ran], y, s=[30 + 1500 * r['memory_gb'] / largest for r in ran],
                   alpha=0.5, color=color, label=model)
        for r, value in zip(ran, y):
            ax.annotate(r['task'], (r['examples_per_second'], value), fontsize=8, ha='center', va='bottom')
    ax.set_xscale('log')
    ax.set_xlabel('training examples per second (log scale)')
    if use_accuracy:
        ax.set_ylabel('test accuracy (%) of the runs in weights/')
    else:
        ax.set_yticks(range(len(names)), names)
        ax.set_ylabel('task (no training histories yet)')
    ax.set_title('Hrrformer against the softmax Transformer (circle area: memory)')
    ax.legend(loc='best', markerscale=0.5)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse(argv):
    options = {'small': False, 'tasks': ','.join(TASKS), 'length': 0, 'repeats': 0, 'sweep': '9-17',
               'memory_fraction': 0.7, 'output_dir': str(utils.ROOT / 'benchmarks' / 'results')}
    for arg in argv:
        name, _, value = arg[2:].partition('=')
        if arg == '--small':
            options['small'] = True
        elif arg.startswith('--') and name in options and value:
            options[name] = int(value) if name in ('length', 'repeats') else \
                float(value) if name == 'memory_fraction' else value
        else:
            raise SystemExit(f'error: cannot read {arg!r}; options: --small, --tasks=a,b, --length=T, --repeats=N, '
                             f'--sweep=A-B (powers of two) or none, --memory_fraction=F, --output_dir=DIR')
    unknown = set(options['tasks'].split(',')) - set(TASKS)
    if unknown:
        raise SystemExit(f'error: unknown task(s) {", ".join(sorted(unknown))}; tasks: {", ".join(TASKS)}')
    options['repeats'] = options['repeats'] or (2 if options['small'] else 5)
    return options


def main(argv):
    options = parse(argv)
    device = jax.local_devices()[0]
    rows = []
    for task in options['tasks'].split(','):
        rows += compare(task, task_config(task, options['small'], options['length']), device, options['repeats'],
                        options['memory_fraction'])
    low, high = (1, 0) if options['sweep'] == 'none' else map(int, options['sweep'].split('-'))
    if options['small'] and options['sweep'] != 'none':  # one point, to show the sweep works
        low = high = 10
    for power in range(low, high + 1):
        config = dataclasses.replace(task_config('ember', options['small'], 0), max_seq_len=2 ** power, batch_size=1)
        rows += compare(f'ember T=2^{power}', config, device, options['repeats'], options['memory_fraction'])
    peak = trainer.peak_memory_mb(device) / 1024
    write_outputs(rows, Path(options['output_dir']).expanduser().resolve(), peak)
    print(f"wrote speed_memory.csv, .md and .png in {options['output_dir']}")


if __name__ == '__main__':
    main(sys.argv[1:])
