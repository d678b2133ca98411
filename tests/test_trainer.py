"""The shared pmap trainer: device-count invariance, exact evaluation, resume, NaN batches, the paper config."""
import dataclasses
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state

import trainer
import utils
from conftest import FIXTURES
from hrrformer import build_model
from listops.dataset import load_dataset
from utils import UserError

TINY = trainer.Config(task='tiny', max_seq_len=64, n_layer=1, embed_size=16, heads=2, dropout_rate=0.0,
                      batch_size=2, epochs=1)


@pytest.fixture
def data_dir(tmp_path):
    """The real-format fixture (24 / 7 / 9 rows) in a writable place (the loader caches beside it)."""
    return str(shutil.copytree(FIXTURES / 'listops-1000', tmp_path / 'listops'))


def splits(config):
    return load_dataset(config)


def train_two_steps(config, train, devices):
    model = build_model(config)
    state, _ = trainer.init_state(config, model, train, steps_per_epoch=2)
    p_train, _ = trainer.compile_steps(config, model.apply, devices)
    state = trainer.replicate(state, devices)
    losses = []
    for step, batch in enumerate(trainer.train_batches(train, 8, np.arange(16))):
        state, metrics = p_train(state, trainer.shard(batch, len(devices)), jax.random.PRNGKey(step))
        metrics = trainer.unreplicate(metrics)
        losses.append(float(metrics['loss'] / metrics['count']))
    return trainer.unreplicate(state.params), losses


def test_four_devices_equal_one_device(devices, data_dir):
    config = dataclasses.replace(TINY, data_dir=data_dir)
    train, _, _ = splits(config)
    params4, losses4 = train_two_steps(config, train, devices)       # 4 devices x 2 examples
    params1, losses1 = train_two_steps(config, train, devices[:1])   # 1 device x 8 examples
    np.testing.assert_allclose(losses4, losses1, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(params4), jax.tree.leaves(params1)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert not np.allclose(losses4[0], losses4[1])  # the parameters did move


def test_run_loss_is_the_same_on_four_devices_and_one(devices, data_dir, tmp_path):
    four = trainer.run(dataclasses.replace(TINY, data_dir=data_dir, workdir=str(tmp_path / 'a')), load_dataset)
    one = trainer.run(dataclasses.replace(TINY, data_dir=data_dir, workdir=str(tmp_path / 'b'), batch_size=8),
                      load_dataset, devices=devices[:1])
    assert four[0]['train_loss'] == pytest.approx(one[0]['train_loss'], rel=1e-5)
    assert four[0]['valid_acc'] == pytest.approx(one[0]['valid_acc'])


def test_evaluation_counts_every_example_once(devices, data_dir):
    config = dataclasses.replace(TINY, data_dir=data_dir)
    train, valid, test = splits(config)
    model = build_model(config)
    state, _ = trainer.init_state(config, model, train, steps_per_epoch=1)
    _, p_eval = trainer.compile_steps(config, model.apply, devices)
    params = trainer.replicate(state.params, devices)
    for split in (valid, test):  # 7 and 9 examples, global batch 8
        acc, count = trainer.evaluate(p_eval, params, split, 8, len(devices))
        predictions = np.argmax(model.apply({'params': state.params}, split['inputs']), -1)
        assert count == len(split['targets'])
        assert acc == pytest.approx(100 * np.mean(predictions == split['targets']))


def test_eval_batches_pad_with_zero_weight():
    split = {'inputs': np.arange(10 * 3).reshape(10, 3), 'targets': np.arange(10)}
    batches = list(trainer.eval_batches(split, 4))
    assert [b['weights'].tolist() for b in batches] == [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]]
    assert np.concatenate([b['targets'][b['weights'] > 0] for b in batches]).tolist() == list(range(10))


def test_training_order_depends_on_seed_and_epoch_only():
    a = trainer.train_order(100, seed=0, epoch=1)
    assert sorted(a.tolist()) == list(range(100))
    assert np.array_equal(a, trainer.train_order(100, seed=0, epoch=1))
    assert not np.array_equal(a, trainer.train_order(100, seed=0, epoch=2))
    assert not np.array_equal(a, trainer.train_order(100, seed=1, epoch=1))
    batches = list(trainer.train_batches({'targets': np.arange(10)}, 4, np.arange(10)))
    assert len(batches) == 2  # the partial last batch is dropped


def final_params(workdir, like):
    steps = utils.checkpoint_steps(f'{workdir}/checkpoints')
    tree, _ = utils.restore_checkpoint(f'{workdir}/checkpoints', steps[0], like)
    return tree['params']


def test_resume_continues_with_the_same_state(data_dir, tmp_path, capsys):
    config = dataclasses.replace(TINY, data_dir=data_dir, dropout_rate=0.1, epochs=2)
    straight = trainer.run(dataclasses.replace(config, workdir=str(tmp_path / 'straight')), load_dataset)
    stopped = dataclasses.replace(config, workdir=str(tmp_path / 'stopped'))
    trainer.run(dataclasses.replace(stopped, epochs=1), load_dataset)
    # a history row written just before a crash that lost its checkpoint is dropped on resume
    utils.append_history(tmp_path / 'stopped' / 'history.csv', {**straight[0], 'epoch': 2, 'train_loss': -1})
    capsys.readouterr()
    resumed = trainer.run(stopped, load_dataset)
    assert 'resumed from epoch 1' in capsys.readouterr().out
    rows = utils.read_history(tmp_path / 'stopped' / 'history.csv')
    assert [int(r['epoch']) for r in rows] == [1, 2]
    assert float(rows[1]['train_loss']) == pytest.approx(straight[1]['train_loss'], rel=1e-6)
    assert resumed[-1]['train_loss'] == straight[1]['train_loss']
    train, _, _ = splits(config)
    state, _ = trainer.init_state(config, build_model(config), train, 1)
    like = trainer.state_to_tree(state, jax.random.PRNGKey(0))
    for a, b in zip(jax.tree.leaves(final_params(tmp_path / 'stopped', like)),
                    jax.tree.leaves(final_params(tmp_path / 'straight', like))):
        np.testing.assert_array_equal(a, b)


def test_finished_run_stops_before_loading_data(data_dir, tmp_path, capsys):
    config = dataclasses.replace(TINY, data_dir=data_dir, workdir=str(tmp_path / 'w'))
    trainer.run(config, load_dataset)

    def no_data(_):
        raise AssertionError('a finished run must not load data')
    capsys.readouterr()
    trainer.run(config, no_data)
    assert 'finished' in capsys.readouterr().out
    last = utils.read_history(tmp_path / 'w' / 'history.csv')[-1]
    evaluated = trainer.run(dataclasses.replace(config, eval_only=True), load_dataset)
    assert evaluated[0]['test_acc'] == pytest.approx(float(last['test_acc']), abs=1e-3)
    with pytest.raises(UserError, match='different model configuration.*embed_size=16 there, 32 here'):
        trainer.run(dataclasses.replace(config, embed_size=32, epochs=2), load_dataset)
    with pytest.raises(UserError, match='no checkpoint'):
        trainer.run(dataclasses.replace(config, workdir=str(tmp_path / 'empty'), eval_only=True), load_dataset)


def test_nan_batch_is_skipped_and_counted(devices):
    def apply_fn(variables, inputs, train, rngs):
        logits = inputs[:, :3] * variables['params']['w']                          # (b, 3)
        logits = jnp.where(inputs[:, :1] < 0, jnp.nan, logits)                     # a NaN example
        return jax.nn.log_softmax(logits)
    state = train_state.TrainState.create(apply_fn=apply_fn, params={'w': jnp.ones(3)}, tx=optax.sgd(0.1))
    config = dataclasses.replace(TINY, num_classes=3)
    p_train, _ = trainer.compile_steps(config, apply_fn, devices)
    state = trainer.replicate(state, devices)
    good = {'inputs': np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32) ** 2,
            'targets': np.arange(8) % 3}
    bad = {'inputs': good['inputs'].copy(), 'targets': good['targets']}
    bad['inputs'][5, 0] = -1.0
    key = jax.random.PRNGKey(0)
    after_bad, metrics = p_train(state, trainer.shard(bad, 4), key)
    metrics = trainer.unreplicate(metrics)
    assert float(metrics['skipped']) == 1 and float(metrics['count']) == 0
    np.testing.assert_array_equal(trainer.unreplicate(after_bad.params)['w'], np.ones(3))  # no update
    after_good, metrics = p_train(after_bad, trainer.shard(good, 4), key)
    metrics = trainer.unreplicate(metrics)
    assert float(metrics['skipped']) == 0 and float(metrics['count']) == 8 and np.isfinite(metrics['loss'])
    assert not np.allclose(trainer.unreplicate(after_good.params)['w'], np.ones(3))  # training goes on


def test_damaged_newest_checkpoint_falls_back_to_the_previous(data_dir, tmp_path, capsys):
    config = dataclasses.replace(TINY, data_dir=data_dir, workdir=str(tmp_path / 'w'), epochs=2)
    trainer.run(config, load_dataset)
    for path in (tmp_path / 'w' / 'checkpoints' / '2' / 'state').rglob('*'):
        if path.is_file() and path.stat().st_size > 0:
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a torn write
    capsys.readouterr()
    history = trainer.run(dataclasses.replace(config, epochs=3), load_dataset)
    out, err = capsys.readouterr()
    assert 'epoch 2 checkpoint' in err and 'cannot be read' in err
    assert 'resumed from epoch 1' in out
    assert [int(r['epoch']) for r in history] == [1, 2, 3]
    assert utils.checkpoint_steps(tmp_path / 'w' / 'checkpoints') == [3, 2]
    state = trainer.latest_meta(tmp_path / 'w' / 'checkpoints')
    assert state['epoch'] == 3
    train, _, _ = splits(config)
    fresh, _ = trainer.init_state(config, build_model(config), train, 1)
    utils.restore_checkpoint(tmp_path / 'w' / 'checkpoints', 2, trainer.state_to_tree(fresh, jax.random.PRNGKey(0)))


def test_binary_cross_entropy_is_the_original_formula():
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [1.0, 0.0]], np.float32)
    targets = np.array([0, 0, 1])
    expected = []
    for p, t in zip(probs, targets):
        y = np.eye(2)[t]
        clip = lambda x: np.clip(x, 1e-10, 1.)  # noqa: E731
        expected.append(np.sum(-clip(y) * np.log(clip(p)) - clip(1 - y) * np.log(clip(1 - p))))
    losses = trainer.per_example_loss(jnp.log(jnp.asarray(probs)), targets, 2, 0.0, 'binary_cross_entropy')
    np.testing.assert_allclose(np.asarray(losses), expected, rtol=1e-5)
    assert float(losses[2]) > 40  # a confident wrong answer is clipped, not infinite
