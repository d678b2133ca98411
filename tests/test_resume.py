"""Runs that are never lost: resume (after an epoch or inside one), finished runs, eval-only from the
checkpoint alone, damaged or altered checkpoints, divergence, a full disk, one run per workdir, and what a
resumed run says about changed settings."""
import dataclasses
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import runlock
import trainer
import utils
from conftest import ROOT, majority_splits, majority_task
from utils import UserError

TINY = trainer.Config(task='tiny', max_seq_len=15, vocab_size=3, num_classes=2, n_layer=1, embed_size=16, heads=2,
                      dropout_rate=0.1, batch_size=2, epochs=2)
load = majority_splits()  # 192 / 64 / 64 examples: 24 steps of 8 per epoch


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """One run of two epochs, trained once; tests work on copies of it."""
    workdir = tmp_path_factory.mktemp('trained') / 'w'
    rows = trainer.run(dataclasses.replace(TINY, workdir=str(workdir)), load)
    return workdir, rows


@pytest.fixture
def run_copy(trained, tmp_path):
    shutil.copytree(trained[0], tmp_path / 'w')
    return tmp_path / 'w', dataclasses.replace(TINY, workdir=str(tmp_path / 'w'))


def like(config):
    state, _ = trainer.init_state(config, trainer.build_model(config), majority_task(2), 1)
    return trainer.state_to_tree(state, jax.random.PRNGKey(0))


def newest_params(workdir, config):
    directory = Path(workdir) / 'checkpoints'
    tree, _ = utils.restore_checkpoint(directory, utils.checkpoint_steps(directory)[0], like(config))
    return tree['params']


def assert_same_params(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_resume_continues_with_the_same_state(trained, tmp_path, capsys):
    stopped = dataclasses.replace(TINY, workdir=str(tmp_path / 'stopped'))
    trainer.run(dataclasses.replace(stopped, epochs=1), load)
    # a history row written just before a crash that lost its checkpoint is dropped on resume
    utils.append_history(tmp_path / 'stopped' / 'history.csv', {**trained[1][0], 'epoch': 2, 'train_loss': -1})
    capsys.readouterr()
    resumed = trainer.run(stopped, load)
    assert 'resumed from epoch 1' in capsys.readouterr().out
    rows = utils.read_history(tmp_path / 'stopped' / 'history.csv')
    assert [int(r['epoch']) for r in rows] == [1, 2]
    assert resumed[-1]['train_loss'] == trained[1][1]['train_loss']
    assert_same_params(newest_params(tmp_path / 'stopped', TINY), newest_params(trained[0], TINY))


def test_finished_run_and_eval_only_report_the_trained_model(run_copy, capsys):
    workdir, config = run_copy

    def no_data(_):
        raise AssertionError('a finished run must not load data')
    capsys.readouterr()
    trainer.run(config, no_data)
    assert 'finished' in capsys.readouterr().out
    last = utils.read_history(workdir / 'history.csv')[-1]
    evaluated = trainer.run(dataclasses.replace(config, eval_only=True), load)
    assert evaluated[0]['test_acc'] == pytest.approx(float(last['test_acc']), abs=1e-3)
    fresh = trainer.run(dataclasses.replace(config, workdir=str(workdir.parent / 'fresh'), epochs=1, lr=1e-9,
                                            end_lr=1e-9), load)
    assert abs(fresh[0]['test_acc'] - evaluated[0]['test_acc']) > 10  # a fresh model is far worse: restored
    with pytest.raises(UserError, match='different model configuration.*embed_size=16 there, 32 here'):
        trainer.run(dataclasses.replace(config, embed_size=32, epochs=3), load)
    with pytest.raises(UserError, match='no checkpoint'):
        trainer.run(dataclasses.replace(config, workdir=str(workdir.parent / 'empty'), eval_only=True), load)


def test_eval_only_needs_only_the_workdir(run_copy, capsys):
    workdir, _ = run_copy
    script_config = dataclasses.replace(TINY, embed_size=64, heads=8, n_layer=3)  # the script's values differ
    last = utils.read_history(workdir / 'history.csv')[-1]
    capsys.readouterr()
    rows = trainer.main(script_config, load, ['--eval_only=true', f'--workdir={workdir}'])
    assert rows[0]['test_acc'] == pytest.approx(float(last['test_acc']), abs=1e-3)
    assert 'epoch 2: valid acc' in capsys.readouterr().out
    with pytest.raises(SystemExit):  # a model setting given explicitly still has to match
        trainer.main(script_config, load, ['--eval_only=true', f'--workdir={workdir}', '--embed_size=64'])
    assert 'different model configuration' in capsys.readouterr().err


def test_damaged_newest_checkpoint_falls_back_to_the_previous(run_copy, capsys):
    workdir, config = run_copy
    newest = utils.checkpoint_steps(workdir / 'checkpoints')[0]
    for path in (workdir / 'checkpoints' / str(newest) / 'state').rglob('*'):
        if path.is_file() and path.stat().st_size > 0:
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a torn write
    capsys.readouterr()
    history = trainer.run(dataclasses.replace(config, epochs=3), load)
    out, err = capsys.readouterr()
    assert f'step {newest} checkpoint' in err and 'cannot be read' in err
    assert 'resumed from epoch 1' in out
    assert [int(r['epoch']) for r in history] == [1, 2, 3]
    assert utils.checkpoint_steps(workdir / 'checkpoints') == [72, 48]  # the damaged one replaced
    assert trainer.latest_meta(workdir / 'checkpoints')['epoch'] == 3


def flip_one_bit(workdir, config):
    """The newest checkpoint with one bit of one parameter flipped, written through orbax itself so that
    storage has nothing to notice (as a bit flipped on disk inside a compressed chunk, which carries no
    checksum: orbax alone then restores a parameter off by 1e-8 without a word)."""
    import orbax.checkpoint as ocp
    newest = utils.checkpoint_steps(workdir / 'checkpoints')[0]
    folder = workdir / 'checkpoints' / str(newest) / 'state'
    checkpointer = ocp.StandardCheckpointer()
    tree = checkpointer.restore(folder, jax.tree.map(ocp.utils.to_shape_dtype_struct, like(config)))
    embedding = np.array(tree['params']['encoder']['Embedding_0']['token']['embedding'])
    embedding.view(np.uint32)[1, 2] ^= 1  # the lowest bit of one float
    tree['params']['encoder']['Embedding_0']['token']['embedding'] = embedding
    shutil.rmtree(folder)
    checkpointer.save(folder, tree)
    checkpointer.wait_until_finished()
    return newest


def test_a_flipped_byte_is_caught_by_the_checksum(run_copy, capsys):
    workdir, config = run_copy
    newest = flip_one_bit(workdir, config)
    capsys.readouterr()
    rows = trainer.run(dataclasses.replace(config, epochs=3), load)
    err = capsys.readouterr().err
    assert f'the state of the step {newest} checkpoint' in err
    assert [int(r['epoch']) for r in rows] == [1, 2, 3]  # resumed from epoch 1, not from the altered state


def test_a_checkpoint_under_another_step_is_refused(run_copy, capsys):
    workdir, config = run_copy
    checkpoints = workdir / 'checkpoints'
    shutil.rmtree(checkpoints / '24')
    shutil.copytree(checkpoints / '48', checkpoints / '96')  # epoch 2's checkpoint, seen as a later step
    capsys.readouterr()
    assert trainer.latest_meta(checkpoints)['epoch'] == 2
    assert 'its metadata says step 48, not 96' in capsys.readouterr().err


def test_a_diverged_run_stops_and_keeps_the_last_good_checkpoint(run_copy, monkeypatch):
    workdir, config = run_copy
    before = utils.checkpoint_steps(workdir / 'checkpoints')
    monkeypatch.setattr(trainer, 'per_example_loss', lambda log_probs, *args: log_probs[:, 0] * np.nan)
    with pytest.raises(trainer.Diverged, match='diverged in epoch 3: 192 of 192 training examples gave NaN.*'
                                               'smaller --lr'):
        trainer.run(dataclasses.replace(config, epochs=5), load)
    assert utils.checkpoint_steps(workdir / 'checkpoints') == before
    assert [r['epoch'] for r in utils.read_history(workdir / 'history.csv')] == ['1', '2']


def test_parameters_that_are_not_finite_are_never_saved(trained, tmp_path, devices):
    config = dataclasses.replace(TINY, workdir=str(tmp_path))
    state, _ = trainer.init_state(config, trainer.build_model(config), majority_task(2), 1)
    state = state.replace(params=jax.tree.map(lambda x: x * np.inf, state.params))
    with pytest.raises(trainer.Diverged, match='parameters are no longer finite'):
        trainer.save(tmp_path / 'checkpoints', trainer.replicate(state, devices), jax.random.PRNGKey(0),
                     {'epoch': 1, 'config': {}}, 1e-3)
    assert utils.checkpoint_steps(tmp_path / 'checkpoints') == []


def test_a_full_disk_is_one_line_and_leaves_nothing_behind(run_copy, monkeypatch):
    workdir, config = run_copy
    import orbax.checkpoint as ocp

    def full(self, step, *args, **kwargs):
        (Path(self.directory) / f'{step}.orbax-checkpoint-tmp-123').mkdir()  # what a failed write leaves
        raise ValueError("RESOURCE_EXHAUSTED: Failed to write: No space left on device [os_error_code='28']")
    monkeypatch.setattr(ocp.CheckpointManager, 'save', full)
    with pytest.raises(UserError, match=r'no space left on the device of .*checkpoints for the checkpoint of step 72 '
                                        r'\(epoch 3\) \(about 0 MB needed\)'):
        trainer.run(dataclasses.replace(config, epochs=3), load)
    assert not list((workdir / 'checkpoints').glob('*tmp*'))


def can_mount_tmpfs():
    target = Path(os.environ.get('TMPDIR', '/tmp')) / f'hrrformer-mount-probe-{os.getpid()}'
    target.mkdir(exist_ok=True)
    mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', str(target)],
                             capture_output=True).returncode == 0
    if mounted:
        subprocess.run(['umount', str(target)], capture_output=True)
    target.rmdir()
    return mounted


@pytest.mark.skipif(not can_mount_tmpfs(), reason='needs to mount a small tmpfs (root); the test above injects the error')
def test_a_real_full_disk(tmp_path):
    small = tmp_path / 'small'
    small.mkdir()
    subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=96k', 'tmpfs', str(small)], check=True)
    try:
        command = [sys.executable, str(ROOT / 'listops' / 'hrrformer_mgpu.py'), f'--data_dir={tmp_path / "data"}',
                   f'--workdir={small / "w"}', '--n_layer=1', '--embed_size=64', '--heads=2', '--max_seq_len=64',
                   '--epochs=1', '--batch_size=2']
        shutil.copytree(ROOT / 'tests' / 'fixtures' / 'listops-1000', tmp_path / 'data')
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert result.returncode == 2 and 'Traceback' not in result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith(f'error: no space left on the device of {small / "w"}')
        assert len(result.stderr.strip().splitlines()) == 1
        assert not list(small.rglob('*tmp*'))
        (small / 'filler').write_bytes(b'')
        with open(small / 'filler', 'wb') as f:  # fill the disk, then restart: the history cannot be rewritten
            try:
                f.write(b'\0' * 200_000)
            except OSError:
                pass
        again = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert again.returncode == 2 and 'Traceback' not in again.stderr
        assert not list(small.rglob('*.tmp'))
    finally:
        subprocess.run(['umount', str(small)])


def test_two_runs_on_one_workdir(tmp_path):
    config = dataclasses.replace(TINY, workdir=str(tmp_path / 'w'))
    with runlock.hold(tmp_path / 'w'):
        with pytest.raises(UserError, match=rf'is in use by another run \(pid {os.getpid()} on '):
            trainer.run(config, load)
    assert not (tmp_path / 'w' / runlock.NAME).exists()  # released
    # a second process, while the first trains: it stops at once with one line naming the holder
    command = [sys.executable, '-c', 'import sys, time; sys.path.insert(0, sys.argv[1]); import runlock\n'
               'with runlock.hold(sys.argv[2]):\n    print("locked", flush=True); time.sleep(60)',
               str(ROOT), str(tmp_path / 'w')]
    holder = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'locked'
        result = subprocess.run([sys.executable, str(ROOT / 'listops' / 'hrrformer_mgpu.py'),
                                 f'--workdir={tmp_path / "w"}', '--data_dir=/nonexistent'],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2
        assert re.fullmatch(rf'error: {re.escape(str(tmp_path / "w"))} is in use by another run \(pid {holder.pid} on '
                            rf'{re.escape(socket.gethostname())}, started \d{{4}}-\d\d-\d\d \d\d:\d\d\): wait for it to '
                            rf'end, or give this run another --workdir', result.stderr.strip())
        holder.send_signal(signal.SIGKILL)  # a kill -9 leaves its lock file behind ...
        holder.wait()
        assert (tmp_path / 'w' / runlock.NAME).exists()
        with runlock.hold(tmp_path / 'w'):  # ... which the next run takes over, saying so
            pass
    finally:
        holder.kill()


def test_a_stale_lock_is_taken_over_with_a_message(tmp_path, capsys):
    (tmp_path / 'w').mkdir()
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    (tmp_path / 'w' / runlock.NAME).write_text(f'{{"host": "{os.uname().nodename}", "pid": {dead.pid}, "started": 0}}')
    trainer.run(dataclasses.replace(TINY, workdir=str(tmp_path / 'w'), epochs=1), load)
    assert f'taking over the lock of a run that ended without releasing it (pid {dead.pid}' in capsys.readouterr().out


@pytest.mark.parametrize('make', ['file', 'read-only'])
def test_a_workdir_that_cannot_be_written_stops_before_the_data(tmp_path, make):
    workdir = tmp_path / 'w'
    if make == 'file':
        workdir.write_text('not a folder')
    else:
        workdir.mkdir()
        workdir.chmod(0o500)
        if os.access(workdir, os.W_OK):  # root writes anywhere: make the folder's file system read-only instead
            workdir.chmod(0o700)
            workdir = tmp_path / 'w' / 'sub'
            (tmp_path / 'w').chmod(0o500)
            subprocess.run(['chattr', '+i', str(tmp_path / 'w')], capture_output=True)

    def no_data(_):
        raise AssertionError('the workdir must be checked before any data is loaded')
    try:
        with pytest.raises(UserError, match='cannot write to the workdir .*: give a writable folder as --workdir'):
            trainer.run(dataclasses.replace(TINY, workdir=str(workdir)), no_data)
    finally:
        subprocess.run(['chattr', '-i', str(tmp_path / 'w')], capture_output=True)
        (tmp_path / 'w').chmod(0o700) if (tmp_path / 'w').is_dir() else None


def test_resuming_with_other_training_settings_says_which(run_copy, capsys):
    workdir, config = run_copy
    trainer.run(dataclasses.replace(config, epochs=3, lr=5e-4, batch_size=4, seed=7), load)
    err = capsys.readouterr().err
    assert "warning: resuming with training settings that differ from the checkpoint's:" in err
    assert 'batch_size=2 there, 4 here' in err and 'lr=0.001 there, 0.0005 here' in err and 'seed=0 there, 7 here' in err


def test_a_garbage_line_in_the_history_is_one_line(run_copy):
    workdir, config = run_copy
    with open(workdir / 'history.csv', 'a') as f:
        f.write('\x00\x01garbage,,\n')
    with pytest.raises(UserError, match=r'history.csv:4: malformed history row .*repair or delete that line'):
        trainer.run(dataclasses.replace(config, epochs=3), load)


def test_events_hold_the_logged_scalars(trained):
    from tensorboard.backend.event_processing import event_accumulator
    accumulator = event_accumulator.EventAccumulator(str(trained[0]))
    accumulator.Reload()
    tags = set(accumulator.Tags()['scalars'])
    assert {'train/loss', 'train/accuracy', 'train/learning_rate', 'train/examples_per_second', 'epoch/valid_acc',
            'epoch/test_acc', 'epoch/peak_memory_mb'} <= tags
    assert [s.step for s in accumulator.Scalars('train/loss')] == [20, 24, 44, 48]  # every 20 steps, and epoch ends
    valid = [(s.step, s.value) for s in accumulator.Scalars('epoch/valid_acc')]
    assert valid == [(24, pytest.approx(trained[1][0]['valid_acc'])), (48, pytest.approx(trained[1][1]['valid_acc']))]


def test_a_run_killed_between_two_mid_epoch_checkpoints_resumes_exactly(tmp_path):
    """A run saving every 0.3 s inside its epochs is killed after a mid-epoch checkpoint and started again:
    it ends with the same parameters and history as a run never interrupted."""
    from listops.generate import write_dataset
    write_dataset(tmp_path / 'data', train=1200, valid=16, test=16, seed=0, verbose=False)
    args = [f'--data_dir={tmp_path / "data"}', '--n_layer=1', '--embed_size=16', '--heads=2', '--max_seq_len=32',
            '--epochs=1', '--batch_size=1', '--dropout_rate=0.1']
    command = [sys.executable, str(ROOT / 'listops' / 'hrrformer_mgpu.py'), *args]
    straight = subprocess.run(command + [f'--workdir={tmp_path}/straight'], capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr[-3000:]
    victim = subprocess.Popen(command + [f'--workdir={tmp_path}/killed', '--checkpoint_minutes=0.005'],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = tmp_path / 'killed' / 'checkpoints'
    deadline = time.time() + 240
    while len([p for p in checkpoints.glob('*') if p.name.isdigit()]) < 2 and time.time() < deadline:
        time.sleep(0.05)
    assert victim.poll() is None, 'the run ended before it could be killed'
    victim.kill()
    victim.wait()
    saved = utils.newest_meta_json(checkpoints)
    assert 0 < saved['epoch_step'] < 300 and saved['epoch'] == 0  # killed inside epoch 1, after a mid-epoch save
    again = subprocess.run(command + [f'--workdir={tmp_path}/killed'], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from epoch 0, step {saved['epoch_step']} of epoch 1" in again.stdout
    config = utils.apply_overrides(trainer.Config(), args)
    for a, b in zip(jax.tree.leaves(newest_params(tmp_path / 'killed', config)),
                    jax.tree.leaves(newest_params(tmp_path / 'straight', config))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    killed, straight = (utils.read_history(tmp_path / name / 'history.csv')[0] for name in ('killed', 'straight'))
    for key in ('train_loss', 'train_acc', 'valid_acc', 'test_acc'):
        assert float(killed[key]) == pytest.approx(float(straight[key]), rel=1e-6)
