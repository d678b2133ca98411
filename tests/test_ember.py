"""EMBER end to end: the script on generated data, its length-dependent batch, T = 2^15, the sweep."""
import csv
import dataclasses
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import trainer
from conftest import ROOT
from ember.generate import write_dataset
from ember.hrrformer_mgpu import complete, config
from hrrformer import build_model
from utils import read_history


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp('ember')
    write_dataset(directory, count=48, length=8192, seed=0, workers=0, verbose=False)
    return directory


def test_the_batch_follows_the_length():
    assert [complete(dataclasses.replace(config, max_seq_len=2 ** k)).batch_size for k in (8, 14, 16, 17, 19)] == \
        [256, 4, 1, 1, 1]
    assert complete(dataclasses.replace(config, batch_size=3)).batch_size == 3
    assert complete(config).workdir.endswith('weights/ember_T16384')


def test_paper_model(devices):
    assert (config.n_layer, config.embed_size, config.heads, config.mlp_ratio, config.block, config.positions) == \
        (1, 256, 8, 2.0, 'B', 'learned')
    assert (config.use_bias, config.activation, config.cls_token, config.loss, config.label_smoothing) == \
        (True, 'relu', True, 'binary_cross_entropy', 0.0)
    assert (config.lr, config.lr_decay, config.epochs, config.optimizer) == (1e-3, 0.85, 10, 'adam')


def test_one_train_step_at_2_to_the_15(devices):
    cfg = dataclasses.replace(complete(dataclasses.replace(config, max_seq_len=2 ** 15)), batch_size=1)
    rng = np.random.default_rng(0)
    batch = {'inputs': rng.integers(0, 257, size=(4, 2 ** 15)).astype(np.uint16), 'targets': np.array([0, 1, 0, 1])}
    model = build_model(cfg)
    state, _ = trainer.init_state(cfg, model, batch, steps_per_decay=1)
    p_train, _ = trainer.compile_steps(cfg, model.apply, devices)
    state, metrics = p_train(trainer.replicate(state, devices), trainer.shard(batch, 4), jax.random.PRNGKey(0))
    metrics = trainer.unreplicate(metrics)
    assert float(metrics['count']) == 4 and np.isfinite(float(metrics['loss']))


def run(*args, cwd=ROOT):
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_script_runs_end_to_end_on_generated_data(data_dir, tmp_path):
    result = run(ROOT / 'ember' / 'hrrformer_mgpu.py', f'--data_dir={data_dir}', '--max_seq_len=1024',
                 '--batch_size=2', '--epochs=1', '--loader_workers=2', f'--workdir={tmp_path}/w', cwd=ROOT / 'ember')
    assert result.returncode == 0, result.stderr[-3000:]
    assert '35 train / 3 valid / 10 test examples' in result.stdout and 'epoch 1/1: train loss' in result.stdout


def test_sweep_writes_its_table_and_plot(data_dir, tmp_path):
    result = run(ROOT / 'ember' / 'sweep.py', '--min_power=8', '--max_power=9', f'--output_dir={tmp_path}',
                 f'--data_dir={data_dir}', '--epochs=1', '--loader_workers=0', '--batch_size=4')
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / 'sweep.csv') as f:
        rows = list(csv.DictReader(f))
    assert [int(r['length']) for r in rows] == [256, 512] and all(r['status'] == 'ok' for r in rows)
    for row in rows:  # each row is its run's own history
        history = read_history(tmp_path / f"T{row['length']}" / 'history.csv')
        assert len(history) == int(row['epochs']) == 1
        assert (row['test_acc'], row['valid_acc']) == (history[-1]['test_acc'], history[-1]['valid_acc'])
        assert float(row['peak_memory_mb']) == float(history[-1]['peak_memory_mb']) > 0
    assert (tmp_path / 'sweep.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    bad = run(ROOT / 'ember' / 'sweep.py', '--max_power=x')
    assert bad.returncode == 2 and "--max_power: expected an integer >= 1, got 'x'" in bad.stderr


def test_without_data_dir_a_stand_in_is_generated_once(tmp_path, monkeypatch, capsys):
    import ember.hrrformer_mgpu as script
    monkeypatch.setattr(script, 'GENERATED_DIR', tmp_path / 'ember')
    small = dataclasses.replace(config, max_seq_len=256, generate_count=24, generate_length=4096, loader_workers=0)
    train, valid, test = script.load_dataset(small)
    assert 'generating a stand-in of 24 files of 4096 bytes' in capsys.readouterr().out
    assert (len(train) + len(valid), len(test)) == (19, 5)  # a fifth (rounded up) for test
    script.load_dataset(small)
    assert 'generating' not in capsys.readouterr().out


def descendants(pid):
    """Every process below `pid`, from /proc (ppid is the 4th field of /proc/<pid>/stat)."""
    children = {}
    for entry in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open(f'/proc/{entry}/stat', 'rb') as f:
                ppid = int(f.read().rsplit(b')', 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


def running(pid):
    try:
        with open(f'/proc/{pid}/stat', 'rb') as f:
            return f.read().rsplit(b')', 1)[1].split()[0] not in (b'Z', b'X')  # a zombie has ended
    except OSError:
        return False


@pytest.mark.skipif(not os.path.isdir('/proc/self'), reason='finds the processes through /proc (Linux)')
def test_kill_9_of_the_trainer_ends_its_readers(data_dir, tmp_path):
    trainer_run = subprocess.Popen(
        [sys.executable, str(ROOT / 'ember' / 'hrrformer_mgpu.py'), f'--data_dir={data_dir}', '--max_seq_len=1024',
         '--batch_size=2', '--epochs=1000', '--loader_workers=2', f'--workdir={tmp_path}/w'],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    below = []
    try:
        deadline = time.monotonic() + 240
        while len(below) < 4 and time.monotonic() < deadline:  # fork server, resource tracker, 2 readers
            assert trainer_run.poll() is None, 'the training run ended by itself'
            time.sleep(0.5)
            below = [pid for pid in descendants(trainer_run.pid) if running(pid)]
        assert len(below) >= 4, f'the readers never started: {below}'
        trainer_run.kill()
        trainer_run.wait()
        deadline = time.monotonic() + 10
        while any(map(running, below)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [pid for pid in below if running(pid)], 'processes outlived the trainer by 10 s'
    finally:
        trainer_run.kill()
        for pid in below:
            if running(pid):
                os.kill(pid, signal.SIGKILL)
