"""Several processes joined by jax.distributed (gloo collectives on CPU) train like one process."""
import dataclasses
import os
import shutil
import socket
import subprocess
import sys

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


def two_processes(data, workdir, attempts=2):
    """stdout of processes 0 and 1 of one run; a start that hangs (a port taken meanwhile) is tried again."""
    env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=2'}
    for attempt in range(attempts):
        command = [sys.executable, str(ROOT / 'listops' / 'hrrformer_mgpu.py'), f'--data_dir={data}',
                   f'--workdir={workdir}', f'--coordinator_address=127.0.0.1:{free_port()}', '--num_processes=2', *ARGS]
        workers = [subprocess.Popen(command + [f'--process_id={i}'], env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True) for i in (0, 1)]
        try:
            outputs = [worker.communicate(timeout=150) for worker in workers]
        except subprocess.TimeoutExpired:
            for worker in workers:
                worker.kill()
                worker.communicate()
            shutil.rmtree(workdir, ignore_errors=True)
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
