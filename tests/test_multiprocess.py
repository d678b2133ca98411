"""Several processes joined by jax.distributed (gloo collectives on CPU) train like one process."""
import dataclasses
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

import trainer
import utils
from conftest import FIXTURES, ROOT
from listops.dataset import load_dataset

ARGS = ['--n_layer=1', '--embed_size=16', '--heads=2', '--max_seq_len=64', '--epochs=1', '--batch_size=2',
        '--dropout_rate=0.0']


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def two_processes(data, workdir, extra=(), attempts=2):
    """stdout of processes 0 and 1 of one run; a start that hangs (a port taken meanwhile) is tried again."""
    env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=2'}
    for attempt in range(attempts):
        command = [sys.executable, str(ROOT / 'listops' / 'hrrformer_mgpu.py'), f'--data_dir={data}',
                   f'--workdir={workdir}', f'--coordinator_address=127.0.0.1:{free_port()}', '--num_processes=2', *ARGS,
                   *extra]
        workers = [subprocess.Popen(command + [f'--process_id={i}'], env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True) for i in (0, 1)]
        try:
            outputs = [worker.communicate(timeout=150) for worker in workers]
        except subprocess.TimeoutExpired:
            for worker in workers:
                worker.kill()
                worker.communicate()
            continue
        for worker, (_, err) in zip(workers, outputs):
            assert worker.returncode == 0, err[-3000:]
        return [out for out, _ in outputs]
    raise AssertionError(f'two processes did not finish in {attempts} attempts')


def test_two_processes_train_like_one_with_four_devices(tmp_path):
    data = shutil.copytree(FIXTURES / 'listops-1000', tmp_path / 'data')
    one = trainer.run(utils.apply_overrides(dataclasses.replace(trainer.Config(), data_dir=str(data),
                                                                workdir=str(tmp_path / 'one')), ARGS), load_dataset)
    outputs = two_processes(data, tmp_path / 'two')
    assert 'epoch 1/1: train loss' in outputs[0] and 'epoch 1/1' not in outputs[1]  # process 0 logs
    assert '4 cpu device(s) in 2 processes' in outputs[0]
    rows = utils.read_history(tmp_path / 'two' / 'history.csv')
    assert len(rows) == 1 and list(tmp_path.glob('two/*.csv')) == [tmp_path / 'two' / 'history.csv']
    assert float(rows[0]['train_loss']) == pytest.approx(one[0]['train_loss'], rel=1e-5)
    assert float(rows[0]['valid_acc']) == pytest.approx(one[0]['valid_acc'])
    assert float(rows[0]['test_acc']) == pytest.approx(one[0]['test_acc'])
    assert utils.checkpoint_steps(tmp_path / 'two' / 'checkpoints') == [1]
    # both processes resume from the shared checkpoint, as one process with four devices does
    resumed = two_processes(data, tmp_path / 'two', extra=['--epochs=2'])
    assert 'resumed from epoch 1' in resumed[0]
    one = trainer.run(utils.apply_overrides(dataclasses.replace(trainer.Config(), data_dir=str(data),
                                                                workdir=str(tmp_path / 'one')), ARGS + ['--epochs=2']),
                      load_dataset)
    rows = utils.read_history(tmp_path / 'two' / 'history.csv')
    assert [r['epoch'] for r in rows] == ['1', '2']
    assert float(rows[1]['train_loss']) == pytest.approx(one[1]['train_loss'], rel=1e-5)


def test_kill_9_in_epoch_2_then_restart_ends_like_an_uninterrupted_run(tmp_path):
    import time
    import jax
    from hrrformer import build_model
    from listops.generate import write_dataset
    write_dataset(tmp_path / 'data', train=2000, valid=20, test=20, seed=0, verbose=False)
    args = [f'--data_dir={tmp_path / "data"}', '--n_layer=1', '--embed_size=16', '--heads=2', '--max_seq_len=64',
            '--epochs=2', '--batch_size=1', '--dropout_rate=0.0']
    command = [sys.executable, str(ROOT / 'listops' / 'hrrformer_mgpu.py'), *args]
    straight = subprocess.run(command + [f'--workdir={tmp_path}/straight'], capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr[-3000:]

    victim = subprocess.Popen(command + [f'--workdir={tmp_path}/killed'], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    first = tmp_path / 'killed' / 'checkpoints' / '1'
    deadline = time.time() + 240
    while not first.is_dir() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # well into epoch 2 (about 500 steps)
    assert victim.poll() is None, 'the run ended before it could be killed in epoch 2'
    victim.kill()  # SIGKILL: no clean-up of any kind
    victim.wait()
    assert utils.checkpoint_steps(tmp_path / 'killed' / 'checkpoints') == [1]

    again = subprocess.run(command + [f'--workdir={tmp_path}/killed'], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert 'resumed from epoch 1' in again.stdout
    assert [r['epoch'] for r in utils.read_history(tmp_path / 'killed' / 'history.csv')] == ['1', '2']
    config = utils.apply_overrides(dataclasses.replace(trainer.Config(), data_dir=str(tmp_path / 'data')), args)
    train, _, _ = load_dataset(config)
    state, _ = trainer.init_state(config, build_model(config), train, 1)
    like = trainer.state_to_tree(state, jax.random.PRNGKey(0))
    killed, _ = utils.restore_checkpoint(tmp_path / 'killed' / 'checkpoints', 2, like)
    uninterrupted, _ = utils.restore_checkpoint(tmp_path / 'straight' / 'checkpoints', 2, like)
    for a, b in zip(jax.tree.leaves(killed), jax.tree.leaves(uninterrupted)):
        assert np.array_equal(np.asarray(a), np.asarray(b))
