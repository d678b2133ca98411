"""benchmarks/gpu_check.sh: the smoke run writes every stage's files; failing and slow stages do not stop the rest."""
import csv
import os
import subprocess

import jax

from conftest import ROOT

SCRIPT = ROOT / 'benchmarks' / 'gpu_check.sh'
STAGES = ['environment', 'listops_data', 'speed', 'sweep', 'listops_train', 'results']


def run(out, *args, env=None, timeout=300):
    return subprocess.run(['bash', str(SCRIPT), str(out), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def stages(out):
    with open(out / 'stages.tsv') as f:
        return {name: outcome for name, outcome, _ in csv.reader(f, delimiter='\t')}


def test_smoke_run_writes_what_every_stage_measures(tmp_path):
    out = tmp_path / 'out'
    result = run(out, '--smoke')
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert stages(out) == {name: 'ok' for name in STAGES}
    assert sorted(path.name for path in (out / 'logs').iterdir()) == sorted(f'{name}.log' for name in STAGES)
    environment = (out / 'environment.txt').read_text()
    assert f'jax {jax.__version__}' in environment and 'jaxlib ' in environment and 'python 3.' in environment
    assert 'nvidia-smi' in environment and 'device kind: cpu' in environment
    with open(out / 'speed_memory' / 'speed_memory.csv') as f:
        speed = {row['variant']: row for row in csv.DictReader(f)}
    assert speed['hrr-float32']['status'] == 'ran' and float(speed['hrr-float32']['step_gflop']) > 0
    assert speed['softmax-cudnn-bfloat16']['status'] == 'cuDNN not available on cpu'
    with open(out / 'ember_sweep' / 'speed_memory.csv') as f:
        assert [(row['length'], row['status']) for row in csv.DictReader(f)] == [('512', 'ran'), ('1024', 'ran')]
    for name in ('basic_train.tsv', 'basic_val.tsv', 'basic_test.tsv', 'basic_train.T256.inputs.npy'):
        assert (out / 'data' / 'listops-1000' / name).exists(), name
    with open(out / 'listops_1' / 'history.csv') as f:
        history = list(csv.DictReader(f))
    assert 1 <= len(history) <= 3
    best = max(history, key=lambda row: float(row['valid_acc']))
    summary = (out / 'listops_summary.txt').read_text()
    assert f'{len(history)} whole epoch(s)' in summary
    assert f'test accuracy at the best validation epoch ({best["epoch"]}): {float(best["test_acc"]):.2f}%' in summary
    final = (out / 'summary.txt').read_text()
    assert all(f'{name} ' in final for name in STAGES) and 'failed' not in final and 'timed out' not in final
    assert 'ember_sweep: 2 of 2 steps measured' in final
    assert final.strip() in result.stdout


def test_failing_and_slow_stages_do_not_stop_the_next_ones(tmp_path):
    # a stand-in for Python: the ListOps generator fails at once, every other Python command hangs; with
    # every budget scaled down to 1 s, each stage is stopped by its timeout and the next one still runs
    fake = tmp_path / 'fake_python'
    fake.write_text('#!/usr/bin/env bash\n[ "$1" = listops/generate.py ] && exit 3\nexec sleep 60\n')
    fake.chmod(0o755)
    out = tmp_path / 'out'
    result = run(out, '--smoke', env={'PYTHON': str(fake), 'GPU_CHECK_SCALE': '0.01'}, timeout=120)
    assert result.returncode == 1
    outcome = stages(out)
    assert set(outcome) == set(STAGES)  # the data stage runs in the background: any order
    assert outcome['listops_data'].startswith('failed (exit 3')
    assert all(outcome[name] == 'timed out after 1 s' for name in STAGES if name != 'listops_data')
    final = (out / 'summary.txt').read_text()
    assert final.count('timed out after 1 s') == 5 and 'failed (exit 3' in final


def test_usage_errors_are_one_line(tmp_path):
    for args in ([], [str(tmp_path), '--fast'], ['--smoke']):
        result = subprocess.run(['bash', str(SCRIPT), *args], capture_output=True, text=True, timeout=30)
        assert result.returncode == 2 and result.stderr.strip() == 'usage: bash benchmarks/gpu_check.sh OUT [--smoke]'


def test_help_names_every_stage_and_the_smoke_mode():
    result = subprocess.run(['bash', str(ROOT / 'benchmarks' / 'gpu_check.sh'), '--help'], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0 and result.stderr == ''
    for word in ('environment', 'speed', 'sweep', 'listops_data', 'listops_train', 'results', '--smoke',
                 'GPU_CHECK_SCALE', 'PYTHON'):
        assert word in result.stdout
