"""benchmarks/speed_memory.py: variants, FLOPs against hand counts, the deadline, the sweep's stop, the plot."""
import csv
import subprocess
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / 'benchmarks'))
import speed_memory  # noqa: E402

PNG = b'\x89PNG\r\n\x1a\n'


def read_rows(folder):
    with open(folder / 'speed_memory.csv') as f:
        return list(csv.DictReader(f))


def dense_training_flops(batch, length, embed, hidden):
    """Multiply-adds of the Dense layers of one encoder layer (q, k, v, output, two MLP layers), times 2
    FLOPs, times 3 for a training step (forward; backward: the input's and the kernel's gradients)."""
    per_token = 2 * (4 * embed * embed + 2 * embed * hidden)
    return 3 * batch * length * per_token


def test_small_benchmark_measures_every_variant(tmp_path, capsys):
    variants = 'hrr-float32,hrr-bfloat16,softmax-xla-bfloat16,softmax-cudnn-bfloat16'
    speed_memory.main(['--small', '--tasks=listops', f'--variants={variants}', '--sweep=none', '--repeats=1',
                       f'--output_dir={tmp_path}'])
    rows = {row['variant']: row for row in read_rows(tmp_path)}
    assert list(rows) == variants.split(',') and all(row['task'] == 'listops' for row in rows.values())
    assert rows['softmax-cudnn-bfloat16']['status'] == 'cuDNN not available on cpu'
    assert rows['softmax-cudnn-bfloat16']['examples_per_second'] == ''
    # --small listops: batch 2, T = 512, E = 64, MLP hidden 32, 1 layer; the head's FLOPs are negligible
    dense = dense_training_flops(2, 512, 64, 32)
    attention = 3 * 2 * 2 * (2 * 512 * 512 * 64)  # softmax: q k^T and p v, (T x T x H') per head, 4 heads x 16
    lower_bounds = {'hrr-float32': dense, 'hrr-bfloat16': dense, 'softmax-xla-bfloat16': dense + attention}
    for variant, least in lower_bounds.items():
        row = rows[variant]
        assert row['status'] == 'ran' and (row['length'], row['batch']) == ('512', '2')
        flops, seconds = float(row['step_gflop']) * 1e9, float(row['step_seconds'])
        assert least <= flops <= 1.5 * least, (variant, flops, least)
        assert float(row['achieved_tflops']) == pytest.approx(flops / seconds / 1e12, rel=1e-2)
        assert float(row['matmul_share']) == pytest.approx(float(row['achieved_tflops']) / float(row['matmul_tflops']),
                                                           rel=2e-2)
        assert 0 < float(row['matmul_share']) < 1.5 and float(row['memory_gb']) > 0
    table = (tmp_path / 'speed_memory.md').read_text()
    assert 'on this platform it counts FFTs' in table  # XLA's CPU cost analysis does count them (checked here)
    assert '| task | T | batch | hrr-float32 | hrr-bfloat16 | softmax-xla-bfloat16 | softmax-cudnn-bfloat16 |' in table
    assert '| listops | 512 | 2 | ' in table and 'cuDNN not available on cpu |' in table
    assert (tmp_path / 'speed_memory.png').read_bytes()[:8] == PNG
    assert 'cuDNN not available on cpu' in capsys.readouterr().out


def test_deadline_writes_what_was_measured_and_lists_the_rest(tmp_path, capsys):
    speed_memory.main(['--small', '--tasks=listops,text', '--variants=hrr-float32', '--sweep=9-10', '--repeats=1',
                       '--deadline_seconds=0.5', f'--output_dir={tmp_path}'])
    rows = read_rows(tmp_path)
    assert [(row['task'], row['status']) for row in rows] == [
        ('listops', 'ran'), ('text', 'skipped: deadline'), ('ember T=2^9', 'skipped: deadline'),
        ('ember T=2^10', 'skipped: deadline')]
    assert 'not measured: text, ember T=2^9, ember T=2^10' in capsys.readouterr().out
    assert 'not measured: text, ember T=2^9, ember T=2^10.' in (tmp_path / 'speed_memory.md').read_text()


def test_an_interrupt_keeps_what_was_measured(tmp_path, monkeypatch):
    # a time limit's SIGINT arrives as KeyboardInterrupt while the second configuration is measured
    calls = []

    def compare(label, config, variants, device, options, stopped):
        calls.append(label)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return [{'task': label, 'variant': 'hrr-float32', 'length': config.max_seq_len, 'batch': config.batch_size,
                 'status': 'ran', 'step_seconds': 0.1, 'examples_per_second': 20.0, 'memory_gb': 0.5, 'step_gflop': 1.0,
                 'achieved_tflops': 0.01, 'matmul_tflops': 0.1, 'matmul_share': 0.1, 'flops_note': ''}]
    monkeypatch.setattr(speed_memory, 'compare', compare)
    speed_memory.main(['--small', '--tasks=listops,text,image', '--variants=hrr-float32', '--sweep=none',
                       '--matmul_size=64', '--repeats=1', f'--output_dir={tmp_path}'])
    assert calls == ['listops', 'text']
    assert [(row['task'], row['status']) for row in read_rows(tmp_path)] == [
        ('listops', 'ran'), ('text', 'skipped: interrupted'), ('image', 'skipped: interrupted')]
    assert 'interrupted; not measured: text, image.' in (tmp_path / 'speed_memory.md').read_text()


def test_sweep_stops_trying_a_variant_that_did_not_fit(tmp_path):
    speed_memory.main(['--small', '--tasks=none', '--variants=hrr-float32', '--sweep=9-10', '--memory_fraction=1e-12',
                       f'--output_dir={tmp_path}'])
    rows = read_rows(tmp_path)
    assert [row['task'] for row in rows] == ['ember T=2^9', 'ember T=2^10']
    assert rows[0]['status'].startswith('would need ') and float(rows[0]['memory_gb']) > 0
    assert rows[1]['status'] == 'not tried: did not fit at T=512'
    assert (tmp_path / 'speed_memory.png').read_bytes()[:8] == PNG  # an empty plot says so, but exists


def test_plot_shows_every_point_unclipped_with_a_legend_of_sizes():
    rows = [{'task': task, 'variant': variant, 'length': length, 'batch': 2, 'status': 'ran',
             'examples_per_second': speed, 'memory_gb': memory}
            for task, variant, length, speed, memory in (
                ('listops', 'hrr-float32', 2000, 40.0, 1.5), ('listops', 'softmax-xla-float32', 2000, 6.0, 18.0),
                ('pathx', 'softmax-cudnn-bfloat16', 16384, 0.02, 60.0), ('image', 'hrr-bfloat16', 1024, 900.0, 0.2))]
    rows += [{'task': f'ember T=2^{p}', 'variant': 'hrr-float32', 'length': 2 ** p, 'batch': 1, 'status': 'ran',
              'examples_per_second': 2e4 / 2 ** p, 'memory_gb': 2 ** p / 2 ** 17 * 4} for p in range(9, 20)]
    rows.append({'task': 'text', 'variant': 'softmax-xla-float32', 'length': 4000, 'batch': 2,
                 'status': 'would need 90 GB'})
    fig = speed_memory.draw(rows)
    fig.canvas.draw()
    ax = fig.axes[0]
    circles = [(offsets, sizes) for c in ax.collections for offsets, sizes in zip(c.get_offsets(), c.get_sizes())]
    assert len(circles) == len(rows) - 1  # every measured point, and not the one that did not run
    box = ax.get_window_extent()
    for (x, y), size in circles:  # each circle, its radius included, inside the axes
        cx, cy = ax.transData.transform((x, y))
        radius = (size ** 0.5) / 2 * fig.dpi / 72
        assert box.x0 <= cx - radius and cx + radius <= box.x1 and box.y0 <= cy - radius and cy + radius <= box.y1
    renderer = fig.canvas.get_renderer()
    labels = [text for text in ax.texts if text.get_text()]
    assert sorted(text.get_text() for text in labels) == ['image', 'listops', 'listops', 'pathx']
    for artist in labels + fig.legends:
        extent = artist.get_window_extent(renderer)
        assert fig.bbox.x0 <= extent.x0 and extent.x1 <= fig.bbox.x1
        assert fig.bbox.y0 <= extent.y0 and extent.y1 <= fig.bbox.y1
    variants, sizes = fig.legends
    assert [t.get_text() for t in variants.get_texts()] == ['hrr-float32', 'hrr-bfloat16', 'softmax-xla-float32',
                                                            'softmax-cudnn-bfloat16']
    assert [t.get_text() for t in sizes.get_texts()] == ['60 GB', '6 GB', '0.6 GB']
    assert ax.get_xscale() == 'log' and ax.get_yscale() == 'log'


def test_a_variant_that_fails_is_reported_and_not_tried_longer(tmp_path, monkeypatch):
    def prepare(config, device):
        raise RuntimeError('RESOURCE_EXHAUSTED: out of memory\nwhile allocating')
    monkeypatch.setattr(speed_memory, 'prepare', prepare)
    speed_memory.main(['--small', '--tasks=none', '--variants=hrr-float32', '--sweep=9-10', '--matmul_size=64',
                       f'--output_dir={tmp_path}'])
    assert [row['status'] for row in read_rows(tmp_path)] == [
        'error: RuntimeError: RESOURCE_EXHAUSTED: out of memory', 'not tried: failed at T=512']


@pytest.mark.parametrize('script, options', [
    ('speed_memory.py', ['--small', '--tasks', '--variants', '--length', '--repeats', '--sweep', '--memory_fraction',
                         '--deadline_seconds', '--matmul_size', '--output_dir']),
    ('ember_memory.py', ['--power', '--repeats', '--dtype']),
    ('attention.py', ['--repeats', '--softmax']),
])
def test_help_lists_every_option_with_its_default(script, options):
    result = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / script), '--help'], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    text = ' '.join(result.stdout.split())
    for option in options:
        assert f' {option}' in text, option
    assert text.count('(default:') >= len(options)  # every option says its default (and -h does not)
    bad = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / script), '--nope=1'], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and 'unrecognized arguments' in bad.stderr
