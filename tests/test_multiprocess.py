"""Several processes joined by jax.distributed (gloo collectives on CPU) train like one process."""
import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import trainer
import utils
from conftest import FIXTURES, ROOT
from listops.dataset import load_dataset
from listops.hrrformer_mgpu import config as SCRIPT_CONFIG  # what the processes run: the same schedule

ARGS = ['--n_layer=1', '--embed_size=16', '--heads=2', '--max_seq_len=64', '--epochs=1', '--batch_size=2',
        '--dropout_rate=0.0']


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def start_two(data, workdir, extra=(), per_process=((), ()), env=None):
    """Processes 0 and 1 of one run (2 CPU devices each), started together."""
    env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=2', **(env or {})}
    command = [sys.executable, str(ROOT / 'listops' / 'hrrformer_mgpu.py'), f'--data_dir={data}', f'--workdir={workdir}',
               f'--coordinator_address=127.0.0.1:{free_port()}', '--num_processes=2', *ARGS, *extra]
    return [subprocess.Popen(command + [f'--process_id={i}', *per_process[i]], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for i in (0, 1)]


def two_processes(data, workdir, extra=()):
    """stdout of processes 0 and 1 of one run; both must end well, in time (no second chance: a hang is a bug)."""
    workers = start_two(data, workdir, extra)
    try:
        outputs = [worker.communicate(timeout=200) for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
    for worker, (_, err) in zip(workers, outputs):
        assert worker.returncode == 0, err[-3000:]
    return [out for out, _ in outputs]


def test_two_processes_train_like_one_with_four_devices(tmp_path):
    data = shutil.copytree(FIXTURES / 'listops-1000', tmp_path / 'data')
    one = trainer.run(utils.apply_overrides(dataclasses.replace(SCRIPT_CONFIG, data_dir=str(data),
                                                                workdir=str(tmp_path / 'one')), ARGS), load_dataset)
    outputs = two_processes(data, tmp_path / 'two')
    assert 'epoch 1/1: train loss' in outputs[0] and 'epoch 1/1' not in outputs[1]  # process 0 logs
    assert '4 cpu device(s) in 2 processes' in outputs[0]
    rows = utils.read_history(tmp_path / 'two' / 'history.csv')
    assert len(rows) == 1 and list(tmp_path.glob('two/*.csv')) == [tmp_path / 'two' / 'history.csv']
    assert float(rows[0]['train_loss']) == pytest.approx(one[0]['train_loss'], rel=1e-5)
    assert float(rows[0]['valid_acc']) == pytest.approx(one[0]['valid_acc'])
    assert float(rows[0]['test_acc']) == pytest.approx(one[0]['test_acc'])
    assert utils.checkpoint_steps(tmp_path / 'two' / 'checkpoints') == [3]  # 3 steps of 8
    # both processes resume from the shared checkpoint, as one process with four devices does
    resumed = two_processes(data, tmp_path / 'two', extra=['--epochs=2'])
    assert 'resumed from epoch 1' in resumed[0]
    one = trainer.run(utils.apply_overrides(dataclasses.replace(SCRIPT_CONFIG, data_dir=str(data),
                                                                workdir=str(tmp_path / 'one')), ARGS + ['--epochs=2']),
                      load_dataset)
    rows = utils.read_history(tmp_path / 'two' / 'history.csv')
    assert [r['epoch'] for r in rows] == ['1', '2']
    assert float(rows[1]['train_loss']) == pytest.approx(one[1]['train_loss'], rel=1e-5)


def test_a_process_that_loses_its_peer_stops_with_one_line(tmp_path):
    """kill -9 of process 1 in the middle of training: process 0 stops within the peer timeout, saying why,
    instead of waiting forever in a collective."""
    from listops.generate import write_dataset
    write_dataset(tmp_path / 'data', train=4000, valid=8, test=8, seed=0, verbose=False)
    workers = start_two(tmp_path / 'data', tmp_path / 'w', extra=['--epochs=50'], env={'HRRFORMER_PEER_TIMEOUT': '10'})
    try:
        deadline = time.time() + 150
        while not (tmp_path / 'w' / 'run.lock').exists() and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(8)  # well into training
        assert workers[0].poll() is None and workers[1].poll() is None
        workers[1].kill()
        workers[1].wait()
        killed = time.time()
        _, err = workers[0].communicate(timeout=60)
        assert time.time() - killed < 40  # the 10 s timeout and a few beats; JAX's own would take 100 s
    finally:
        for worker in workers:
            worker.kill()
    assert workers[0].returncode == 1
    assert err.strip().splitlines()[-1].startswith('error: process 1 of 2 has given no sign of life for 10 s; this '
                                                   'process stops too: start every process again')


def test_a_process_that_stops_on_an_error_stops_the_others_at_once(tmp_path):
    data = shutil.copytree(FIXTURES / 'listops-1000', tmp_path / 'data')
    workers = start_two(data, tmp_path / 'w', per_process=((), ('--data_dir=/nonexistent',)))
    try:
        outputs = [worker.communicate(timeout=120) for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
    assert workers[1].returncode == 2 and 'error: /nonexistent lacks basic_train.tsv' in outputs[1][1]
    assert workers[0].returncode == 1
    assert outputs[0][1].strip().splitlines()[-1].startswith('error: process 1 of 2 stopped: /nonexistent lacks')
