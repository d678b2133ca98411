"""Training speed, memory and FLOPs of Hrrformer against the softmax Transformer, side by side in one process.

    python benchmarks/speed_memory.py [--small] [--tasks=listops,text,...] [--variants=...] [--sweep=9-17]
                                      [--deadline_seconds=S] [--output_dir=benchmarks/results]   (--help: all)

For each task's paper configuration (one device, the paper's per-device batch), one training step of
each variant (Hrrformer or the softmax Transformer; float32 or bfloat16; softmax attention by XLA or by
cuDNN's fused kernel) is compiled. Examples per second: the batch over the median of interleaved timed
steps after a warm-up. Memory: the compiled step's memory analysis (temporary + arguments + outputs); a
step that needs more than --memory_fraction of the device's memory (this machine's on CPU) is not run
but reported as "would need N GB". FLOPs: XLA's cost analysis of the compiled step, and the achieved
FLOP/s as a share of a large square matmul's, timed the same way on the same device in the same dtype:
how far each step is from what the device can do. Then a sequence-length sweep at the EMBER
configuration (batch 1, T = 2^a ... 2^b); a variant that does not fit at one length is not tried longer.

Writes speed_memory.csv, speed_memory.md and speed_memory.png (x: sequence length, y: examples per
second, both logarithmic; circle area: memory) into --output_dir.
"""
import argparse
import csv
import dataclasses
import importlib
import math
import os
import re
import sys
import time
from functools import lru_cache
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import hrrformer  # noqa: E402
import trainer  # noqa: E402
import utils  # noqa: E402

TASKS = {  # name: (module, attribute) of the task's paper configuration
    'listops': ('listops.hrrformer_mgpu', 'config'), 'text': ('text.hrrformer_mgpu', 'config'),
    'retrieval': ('retrieval.hrrformer_mgpu', 'config'), 'image': ('image.hrrformer_mgpu', 'config'),
    'pathfinder': ('pathfinder.hrrformer_mgpu', 'pathfinder32'), 'pathx': ('pathfinder.hrrformer_mgpu', 'pathx'),
    'ember': ('ember.hrrformer_mgpu', 'config'),
}
VARIANTS = {  # name: (attention, dtype, softmax_impl)
    'hrr-float32': ('hrr', 'float32', 'xla'), 'hrr-bfloat16': ('hrr', 'bfloat16', 'xla'),
    'softmax-xla-float32': ('softmax', 'float32', 'xla'), 'softmax-xla-bfloat16': ('softmax', 'bfloat16', 'xla'),
    'softmax-cudnn-bfloat16': ('softmax', 'bfloat16', 'cudnn'),
}
GB = 2 ** 30
FIELDS = ['task', 'variant', 'length', 'batch', 'status', 'step_seconds', 'examples_per_second', 'memory_gb',
          'step_gflop', 'achieved_tflops', 'matmul_tflops', 'matmul_share', 'flops_note']


# ----------------------------------------------------------------------------- configurations

def task_config(task, small, length):
    module, name = TASKS[task]
    config = getattr(importlib.import_module(module), name)
    if task == 'ember':
        config = importlib.import_module(module).complete(config)
    if small:
        config = dataclasses.replace(config, n_layer=1, embed_size=64, heads=4,
                                     max_seq_len=min(config.max_seq_len, 512), batch_size=min(config.batch_size, 4))
    if length:
        config = dataclasses.replace(config, max_seq_len=length)
    return dataclasses.replace(config, dropout_rate=0.0)


def variant_config(config, variant):
    attention, dtype, impl = VARIANTS[variant]
    return dataclasses.replace(config, attention=attention, dtype=dtype, softmax_impl=impl)


def cudnn_unavailable(config, device):
    """Why the cuDNN variant cannot run at this configuration (None: it can): not a GPU, or cuDNN refuses
    the attention's (B, T, h, H') shape (tried by compiling it)."""
    if device.platform != 'gpu':
        return f'cuDNN not available on {device.platform}'
    shape = (config.batch_size, config.max_seq_len + config.cls_token, config.heads, config.embed_size // config.heads)
    reason = hrrformer.cudnn_refusal(shape, config.dtype, config.use_mask)
    return None if reason is None else f'cuDNN refused: {reason}'


# ----------------------------------------------------------------------------- measurements

def memory_budget(device, fraction):
    """Bytes a step may use: a fraction of the accelerator's memory, or of this machine's on CPU."""
    stats = device.memory_stats() if device.platform != 'cpu' else None
    total = stats['bytes_limit'] if stats and 'bytes_limit' in stats else \
        os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
    return fraction * total


def cost_flops(compiled):
    """FLOPs of a compiled computation by XLA's cost analysis (a dict, or a list of one in older JAX)."""
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    return float((analysis or {}).get('flops', float('nan')))


@lru_cache(maxsize=None)
def fft_counted():
    """Whether XLA's cost analysis on this platform counts FFTs (it cannot see inside some kernels)."""
    compiled = jax.jit(lambda x: jnp.fft.rfft(x, axis=-1)).lower(jax.ShapeDtypeStruct((64, 256), jnp.float32)).compile()
    return cost_flops(compiled) > 64 * 256  # more than one operation per input value


def lower(config, device):
    """A one-device training step lowered for its state and batch (not yet compiled)."""
    rng = np.random.default_rng(0)
    names = ('inputs1', 'inputs2') if config.head == 'dual' else ('inputs',)
    batch = {name: rng.integers(1, config.vocab_size, size=(config.batch_size, config.max_seq_len)).astype(np.int32)
             for name in names}
    batch['targets'] = rng.integers(0, config.num_classes, size=config.batch_size)
    model = hrrformer.build_model(config)
    state, _ = trainer.init_state(config, model, batch, steps_per_decay=100)
    p_train, _ = trainer.compile_steps(config, model.apply, [device])
    state, batch, key = trainer.replicate(state, [device]), trainer.shard(batch, 1), jax.random.PRNGKey(0)
    return {'step': p_train, 'state': state, 'batch': batch, 'key': key, 'lowered': p_train.lower(state, batch, key)}


def prepare(config, device):
    """A compiled one-device training step, its state and batch, its memory analysis (bytes) and its FLOPs."""
    prepared = lower(config, device)
    compiled = prepared.pop('lowered').compile()
    analysis = compiled.memory_analysis()
    needed = sum(getattr(analysis, field, 0) for field in
                 ('temp_size_in_bytes', 'argument_size_in_bytes', 'output_size_in_bytes')) if analysis else float('nan')
    return dict(prepared, bytes=needed, flops=cost_flops(compiled))


def xla_twin_flops(config, device):
    """FLOPs of the cuDNN variant's step: XLA's count of the same step with XLA's softmax attention (cuDNN's
    fused kernel is a custom call that XLA cannot count), from the lowered step, so that it is counted even
    where that step could not compile or fit."""
    try:
        return cost_flops(lower(dataclasses.replace(config, softmax_impl='xla'), device)['lowered'])
    except Exception:  # noqa: BLE001 - no count is better than a wrong one
        return float('nan')


def median_seconds(calls, repeats):
    """Median seconds of each callable (name -> f() returning something to wait for), timed in turn after one
    warm-up so that all see the same machine. A call that fails is dropped: name -> the exception instead."""
    times, failed = {name: [] for name in calls}, {}
    for round_ in range(repeats + 1):
        for name, call in calls.items():
            if name in failed:
                continue
            tic = time.perf_counter()
            try:
                jax.block_until_ready(call())
            except Exception as error:  # noqa: BLE001 - e.g. out of memory on the device: report, go on
                failed[name] = error
                continue
            if round_:  # round 0 is the warm-up
                times[name].append(time.perf_counter() - tic)
    return {name: failed.get(name, float(np.median(t)) if t else float('nan')) for name, t in times.items()}


@lru_cache(maxsize=None)
def matmul_flops_per_second(dtype, size, repeats):
    """FLOP/s of a (size x size) @ (size x size) matmul in `dtype` (name) on the default device, timed like the
    steps (median after a warm-up): the reference for how much of the device a step uses."""
    a = jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.float32).astype(dtype)
    product = jax.jit(lambda x: x @ x)
    seconds = median_seconds({'matmul': lambda: product(a)}, repeats)['matmul']
    return 2 * size ** 3 / seconds


def percent(share):
    return '-' if share is None or share != share else f'{100 * share:.1f}%'


def status_line(error):
    return f'error: {type(error).__name__}: {(str(error).strip().splitlines() or [""])[0][:160]}'


def compare(label, config, variants, device, options, stopped):
    """One row per variant at one configuration. `stopped`: variant -> why it is not tried at this length of
    the sweep (it did not fit, or failed, at a shorter one); updated here."""
    budget, prepared, rows = memory_budget(device, options.memory_fraction), {}, {}
    held = 0  # bytes of the variants that will run: they are timed in turn, so they are held together
    for variant in variants:
        row = rows[variant] = {'task': label, 'variant': variant, 'length': config.max_seq_len,
                               'batch': config.batch_size}
        settings = variant_config(config, variant)
        reason = cudnn_unavailable(settings, device) if VARIANTS[variant][2] == 'cudnn' else None
        if variant in stopped:
            row['status'] = f'not tried: {stopped[variant]}'
        elif reason:
            row['status'] = reason
        else:
            try:
                prepared[variant] = prepare(settings, device)
            except Exception as error:  # noqa: BLE001 - a variant that fails to build or compile is reported
                row['status'] = status_line(error)
                stopped.setdefault(variant, f'failed at T={config.max_seq_len}')
                continue
            if VARIANTS[variant][2] == 'cudnn':
                prepared[variant]['flops'] = xla_twin_flops(settings, device)
            row['memory_gb'] = round(prepared[variant]['bytes'] / GB, 3)
            if prepared[variant]['bytes'] >= budget:
                row['status'] = f"would need {prepared[variant]['bytes'] / GB:.3g} GB"
                stopped.setdefault(variant, f'did not fit at T={config.max_seq_len}')
            elif held + prepared[variant]['bytes'] >= budget:
                row['status'] = (f"not run: {prepared[variant]['bytes'] / GB:.3g} GB beside the other variants' "
                                 f"{held / GB:.3g} GB would pass the budget (run fewer --variants)")
            else:
                held += prepared[variant]['bytes']
    runs = {name: p for name, p in prepared.items() if 'status' not in rows[name]}

    def step(p):
        def call():
            p['state'], metrics = p['step'](p['state'], p['batch'], p['key'])
            return metrics
        return call
    seconds = median_seconds({name: step(p) for name, p in runs.items()}, options.repeats)
    for variant, value in seconds.items():
        if isinstance(value, Exception):
            rows[variant]['status'] = status_line(value)
            stopped.setdefault(variant, f'failed at T={config.max_seq_len}')
            continue
        rows[variant].update(status='ran', step_seconds=round(value, 5),
                             examples_per_second=round(config.batch_size / value, 3))
        add_flops(rows[variant], variant, prepared, value, options)
    for row in rows.values():
        print(f"{label:>13} {row['variant']:>22} T={row['length']:<6} batch {row['batch']:<3} "
              f"{row.get('examples_per_second', '-'):>10} ex/s {row.get('memory_gb', '-'):>8} GB "
              f"{row.get('step_gflop', '-'):>9} GFLOP {percent(row.get('matmul_share')):>6} of matmul  {row['status']}",
              flush=True)
    return list(rows.values())


def add_flops(row, variant, prepared, seconds, options):
    """The step's FLOPs and the achieved share of the matmul's FLOP/s. cuDNN's fused attention is a custom
    call whose FLOPs XLA cannot count: its step is given the XLA softmax step's count (the same math)."""
    attention, dtype, impl = VARIANTS[variant]
    flops, note = prepared[variant]['flops'], ''
    if impl == 'cudnn':
        note = f'FLOPs of softmax-xla-{dtype}'
    elif attention == 'hrr' and not fft_counted():
        note = 'FFTs not counted by XLA here'
    achieved = flops / seconds
    matmul = matmul_flops_per_second(dtype, options.matmul_size, options.repeats)
    row.update(step_gflop=round(flops / 1e9, 4), achieved_tflops=round(achieved / 1e12, 5),
               matmul_tflops=round(matmul / 1e12, 4), matmul_share=round(achieved / matmul, 4), flops_note=note)


# ----------------------------------------------------------------------------- outputs

def write_outputs(rows, output_dir, variants, notes):
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / 'speed_memory.csv', 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS, restval='')
        writer.writeheader()
        writer.writerows(rows)
    configs = {}
    for row in rows:
        configs.setdefault((row['task'], row['length'], row['batch']), {})[row['variant']] = row

    def cell(row, value):
        return value(row) if row and row.get('status') == 'ran' else (row or {}).get('status', '-')
    lines = notes + ['', 'Examples per second (compiled step memory):', '',
                     '| task | T | batch | ' + ' | '.join(variants) + ' |', '|---|---|---|' + '---|' * len(variants)]
    for (task, length, batch), found in configs.items():
        cells = [cell(found.get(v), lambda r: f"{r['examples_per_second']} ({r['memory_gb']:.2f} GB)") for v in variants]
        lines.append(f'| {task} | {length} | {batch} | ' + ' | '.join(cells) + ' |')
    lines += ['', 'FLOPs per step (XLA cost analysis) and the achieved share of a large matmul\'s FLOP/s:', '',
              '| task | T | variant | GFLOP per step | achieved TFLOP/s | matmul TFLOP/s | share | note |',
              '|---|---|---|---|---|---|---|---|']
    lines += [f"| {r['task']} | {r['length']} | {r['variant']} | {r['step_gflop']} | {r['achieved_tflops']} | "
              f"{r['matmul_tflops']} | {percent(r['matmul_share'])} | {r['flops_note']} |"
              for r in rows if r.get('status') == 'ran']
    (output_dir / 'speed_memory.md').write_text('\n'.join(lines) + '\n')
    try:
        plot(rows, output_dir / 'speed_memory.png')
    except ImportError as error:  # a machine with JAX but without matplotlib still gets its tables
        print(f'note: no speed_memory.png ({error}); pip install matplotlib to draw it', flush=True)


COLORS = {'hrr-float32': 'tab:blue', 'hrr-bfloat16': 'tab:cyan', 'softmax-xla-float32': 'tab:red',
          'softmax-xla-bfloat16': 'tab:orange', 'softmax-cudnn-bfloat16': 'tab:purple'}
LARGEST_AREA = 1200  # points^2: the circle of the largest memory


def draw(rows):
    """The figure: every measured step at (T, examples per second), log-log, circle area proportional to
    its memory; the sweep's points of one variant joined by a line; legends of variants and of sizes, beside
    the axes, whose limits leave room for the largest circle."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    ran = [r for r in rows if r.get('status') == 'ran']
    fig = plt.figure(figsize=(11, 6))
    ax = fig.add_axes((0.08, 0.1, 0.66, 0.82))
    if not ran:
        ax.text(0.5, 0.5, 'nothing measured', ha='center', va='center', transform=ax.transAxes)
        return fig
    largest = max(r['memory_gb'] for r in ran) or 1e-9

    def area(gb):  # points^2
        return 12 + LARGEST_AREA * gb / largest
    shown = [v for v in VARIANTS if any(r['variant'] == v for r in ran)]
    for variant in shown:
        mine = [r for r in ran if r['variant'] == variant]
        sweep = sorted((r for r in mine if r['task'].startswith('ember T=')), key=lambda r: r['length'])
        ax.plot([r['length'] for r in sweep], [r['examples_per_second'] for r in sweep], color=COLORS[variant], lw=0.8)
        ax.scatter([r['length'] for r in mine], [r['examples_per_second'] for r in mine],
                   s=[area(r['memory_gb']) for r in mine], color=COLORS[variant], alpha=0.45,
                   edgecolors=COLORS[variant], clip_on=False)
        for r in mine:
            if not r['task'].startswith('ember T='):
                ax.annotate(r['task'], (r['length'], r['examples_per_second']), xytext=(0, 7),
                            textcoords='offset points', fontsize=7, ha='center', va='bottom', annotation_clip=False)
    ax.set_xscale('log', base=2)
    ax.set_yscale('log')
    room = (LARGEST_AREA + 12) ** 0.5 / 2 + 14  # points: the largest circle's radius and a label above it
    width, height = (size * inches for size, inches in zip(ax.get_position().size, fig.get_size_inches()))
    ax.set_xlim(*log_limits([r['length'] for r in ran], width * 72, room))
    ax.set_ylim(*log_limits([r['examples_per_second'] for r in ran], height * 72, room))
    ax.set_xlabel('sequence length T (log scale)')
    ax.set_ylabel('training examples per second (log scale)')
    ax.set_title('One training step per variant (circle area: compiled step memory; lines: EMBER sweep, batch 1)',
                 fontsize=10)
    fig.legend([Line2D([], [], marker='o', ls='', color=COLORS[v], alpha=0.6) for v in shown], shown,
               loc='upper left', bbox_to_anchor=(0.76, 0.92), fontsize=8, title='variant')
    sizes = sorted({one_digit(g) for g in (largest, largest / 10, largest / 100)}, reverse=True)
    fig.legend([Line2D([], [], marker='o', ls='', color='gray', alpha=0.45, markersize=area(g) ** 0.5) for g in sizes],
               [f'{g:g} GB' for g in sizes], loc='lower left', bbox_to_anchor=(0.76, 0.1), fontsize=8,
               title='compiled step memory', labelspacing=2.0, borderpad=1.0, frameon=False)
    return fig


def log_limits(values, axis_points, room_points):
    """Limits of a logarithmic axis `axis_points` long that leave `room_points` beyond the extreme values
    (and at least a factor of 2)."""
    low, high = math.log(min(values)), math.log(max(values))
    pad = max((high - low) * room_points / (axis_points - 2 * room_points), math.log(2))
    return math.exp(low - pad), math.exp(high + pad)


def one_digit(value):
    """`value` rounded down to one significant digit (a round size for the legend)."""
    unit = 10 ** math.floor(math.log10(value))
    return round(math.floor(value / unit * (1 + 1e-9)) * unit, 12)


def plot(rows, path):
    import matplotlib.pyplot as plt
    fig = draw(rows)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- command line

def parse(argv):
    parser = utils.OneLineParser(prog='speed_memory.py', description=__doc__.split('\n\n')[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add = parser.add_argument
    add('--small', action='store_true', help='shrink every configuration (1 layer, embed 64, T <= 512, batch <= 4) '
        'to run in about a minute on a laptop CPU')
    add('--tasks', metavar='LIST', default=','.join(TASKS), help=f'comma-separated tasks, in the order to measure '
        f'them (the most important first), from {", ".join(TASKS)}; none: only the sweep')
    add('--variants', metavar='LIST', default=','.join(VARIANTS), help='comma-separated variants to compare')
    add('--length', metavar='INT', type=utils.integer_at_least(0), default=0,
        help='sequence length T for every task (0: each task\'s own)')
    add('--repeats', metavar='INT', type=utils.integer_at_least(0), default=0,
        help='timed steps per variant, after one warm-up (0: 5, or 2 with --small)')
    add('--sweep', metavar='A-B[:S]', default=None, help='EMBER length sweep at batch 1 over T = 2^A ... 2^B (every '
        'S-th power with :S), or none; unset (None): 9-17, or 10-10 with --small')
    add('--memory_fraction', metavar='FLOAT', type=float, default=0.7, help='a step needing more than this '
        'fraction of the device\'s memory (the machine\'s on CPU) is not run')
    add('--deadline_seconds', metavar='FLOAT', type=float, default=0, help='start no new configuration after this '
        'many seconds; what was measured is written and the rest listed (0: no deadline)')
    add('--matmul_size', metavar='INT', type=utils.integer_at_least(0), default=0, help='side of the square '
        'matmul whose FLOP/s is the reference (0: 8192 on an accelerator, 2048 on CPU, 1024 with --small)')
    add('--output_dir', metavar='DIR', default=str(utils.ROOT / 'benchmarks' / 'results'),
        help='folder for speed_memory.csv, .md and .png')
    options = parser.parse_args(argv)
    options.tasks = [] if options.tasks == 'none' else options.tasks.split(',')
    options.variants = options.variants.split(',')
    for given, known, what in ((options.tasks, TASKS, 'task'), (options.variants, VARIANTS, 'variant')):
        unknown = sorted(set(given) - set(known))
        if unknown:
            parser.error(f'unknown {what}(s) {", ".join(unknown)}; choose from {", ".join(known)}')
    sweep = options.sweep or ('10-10' if options.small else '9-17')
    found = re.fullmatch(r'(\d+)-(\d+)(?::([1-9]\d*))?', sweep)
    if sweep != 'none' and not (found and int(found[1]) <= int(found[2])):
        parser.error(f'--sweep={sweep}: write A-B or A-B:S (powers of two, e.g. 9-17 or 13-19:2) or none')
    options.powers = list(range(int(found[1]), int(found[2]) + 1, int(found[3] or 1))) if found else []
    options.repeats = options.repeats or (2 if options.small else 5)
    return options


def main(argv):
    options = parse(argv)
    device = jax.local_devices()[0]
    options.matmul_size = options.matmul_size or (1024 if options.small else 2048 if device.platform == 'cpu' else 8192)
    output_dir = Path(options.output_dir).expanduser().resolve()
    work = [(task, task_config(task, options.small, options.length)) for task in options.tasks]
    work += [(f'ember T=2^{p}', dataclasses.replace(task_config('ember', options.small, 0), max_seq_len=2 ** p,
                                                     batch_size=1)) for p in options.powers]
    rows, skipped, given_up, started, why = [], [], {}, time.time(), 'deadline'
    for label, config in work:
        if why == 'deadline' and not (options.deadline_seconds and time.time() - started > options.deadline_seconds):
            try:
                measured = compare(label, config, options.variants, device, options,
                                   given_up if label.startswith('ember T=') else {})
            except KeyboardInterrupt:  # e.g. a time limit's SIGINT: write what was measured
                why = 'interrupted'
            else:
                rows += measured
                write_outputs(rows, output_dir, options.variants, notes(device, options, skipped))  # if killed later
                continue
        skipped.append(label)
        rows += [{'task': label, 'variant': v, 'length': config.max_seq_len, 'batch': config.batch_size,
                  'status': f'skipped: {why}'} for v in options.variants]
    if skipped:
        print(f'{stop_reason(why, options)}; not measured: {", ".join(skipped)}', flush=True)
    write_outputs(rows, output_dir, options.variants, notes(device, options, skipped, why))
    print(f'wrote speed_memory.csv, .md and .png in {output_dir}')


def stop_reason(why, options):
    return f'deadline of {options.deadline_seconds:g} s reached' if why == 'deadline' else 'interrupted'


def notes(device, options, skipped, why='deadline'):
    """The header of speed_memory.md: what was measured where, and what the FLOP counts mean."""
    peak = trainer.peak_memory_mb(device) / 1024
    references = [f'{dtype} {matmul_flops_per_second(dtype, options.matmul_size, options.repeats) / 1e12:.3f} TFLOP/s'
                  for dtype in sorted({VARIANTS[v][1] for v in options.variants})]
    lines = [f'Measured with JAX {jax.__version__} on {device.device_kind} ({device.platform}, one device); peak '
             f'{"device" if device.platform != "cpu" else "process"} memory {peak:.1f} GB.',
             f'Reference: a {options.matmul_size}x{options.matmul_size} matmul reaches {", ".join(references)} '
             f'(default matmul precision).',
             f'FLOPs are XLA\'s cost analysis of the compiled training step; on this platform it '
             f'{"counts" if fft_counted() else "does NOT count"} FFTs'
             f'{"" if fft_counted() else " (Hrrformer steps are undercounted)"}. cuDNN\'s fused attention is '
             f'invisible to it: a cuDNN step is given the XLA softmax step\'s count.']
    if skipped:
        lines.append(f'{stop_reason(why, options)}; not measured: {", ".join(skipped)}.')
    return lines


if __name__ == '__main__':
    main(sys.argv[1:])
