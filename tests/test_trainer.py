"""The shared pmap trainer's steps: device-count invariance, exact evaluation, the original's learning-rate
schedules and NaN handling, the subset of examples it trains on, and the labels it accepts."""
import dataclasses
import importlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state

import trainer
from conftest import FIXTURES, majority_task
from hrrformer import build_model
from listops.dataset import load_dataset
from utils import UserError

TINY = trainer.Config(task='tiny', max_seq_len=64, n_layer=1, embed_size=16, heads=2, dropout_rate=0.0,
                      batch_size=2, epochs=1)


@pytest.fixture
def data_dir(tmp_path):
    """The real-format fixture (24 / 7 / 9 rows) in a writable place (the loader caches beside it)."""
    return str(shutil.copytree(FIXTURES / 'listops-1000', tmp_path / 'listops'))


def train_two_steps(config, train, devices):
    model = build_model(config)
    state, _ = trainer.init_state(config, model, train, steps_per_decay=2)
    initial = state.params
    p_train, _ = trainer.compile_steps(config, model.apply, devices)
    state = trainer.replicate(state, devices)
    losses = []
    for step, batch in enumerate(trainer.train_batches(train, 8, np.arange(16))):
        state, metrics = p_train(state, trainer.shard(batch, len(devices)), jax.random.PRNGKey(step))
        metrics = trainer.unreplicate(metrics)
        losses.append(float(metrics['loss'] / metrics['count']))
    return initial, trainer.unreplicate(state.params), losses


def test_four_devices_equal_one_device(devices, data_dir):
    config = dataclasses.replace(TINY, data_dir=data_dir)
    train, _, _ = load_dataset(config)
    initial, params4, losses4 = train_two_steps(config, train, devices)    # 4 devices x 2 examples
    _, params1, losses1 = train_two_steps(config, train, devices[:1])     # 1 device x 8 examples
    np.testing.assert_allclose(losses4, losses1, rtol=1e-5)
    for a, b, before in zip(jax.tree.leaves(params4), jax.tree.leaves(params1), jax.tree.leaves(initial)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    moved = [not np.allclose(a, before) for a, before in zip(jax.tree.leaves(params4), jax.tree.leaves(initial))]
    assert sum(moved) >= len(moved) - 1  # every parameter moved (but perhaps an unused one)


def test_run_loss_is_the_same_on_four_devices_and_one(devices, data_dir, tmp_path):
    four = trainer.run(dataclasses.replace(TINY, data_dir=data_dir, workdir=str(tmp_path / 'a')), load_dataset)
    one = trainer.run(dataclasses.replace(TINY, data_dir=data_dir, workdir=str(tmp_path / 'b'), batch_size=8),
                      load_dataset, devices=devices[:1])
    assert four[0]['train_loss'] == pytest.approx(one[0]['train_loss'], rel=1e-5)
    assert four[0]['valid_acc'] == pytest.approx(one[0]['valid_acc'])


def test_evaluation_counts_every_example_once(devices, data_dir):
    config = dataclasses.replace(TINY, data_dir=data_dir)
    train, valid, test = load_dataset(config)
    model = build_model(config)
    state, _ = trainer.init_state(config, model, train, steps_per_decay=1)
    _, p_eval = trainer.compile_steps(config, model.apply, devices)
    params = trainer.replicate(state.params, devices)
    for split in (valid, test):  # 7 and 9 examples, global batch 8
        acc, count = trainer.evaluate(p_eval, params, split, 8, len(devices))
        predictions = np.argmax(model.apply({'params': state.params}, split['inputs']), -1)
        assert count == len(split['targets'])
        assert acc == pytest.approx(100 * np.mean(predictions == split['targets']))


def test_padded_rows_never_count(devices):
    """A model that always answers class 0, on 7 examples of class 1: the padding rows of the last batch
    (zeros, so 'class 0') would be right if they counted."""
    def apply_fn(variables, inputs, train):
        return jnp.log(jax.nn.one_hot(jnp.zeros(inputs.shape[0], int), 3) * 0.98 + 0.01)
    _, p_eval = trainer.compile_steps(dataclasses.replace(TINY, num_classes=3), apply_fn, devices)
    split = {'inputs': np.ones((7, 4), np.int32), 'targets': np.ones(7, np.int32)}
    params = trainer.replicate({}, devices)
    assert trainer.evaluate(p_eval, params, split, 8, 4) == (0.0, 7)
    split['targets'][:3] = 0
    assert trainer.evaluate(p_eval, params, split, 8, 4) == (pytest.approx(100 * 3 / 7), 7)
    assert trainer.evaluate(p_eval, params, split, 8, 4, n=2) == (100.0, 2)  # the first n only


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
    later = list(trainer.train_batches({'targets': np.arange(10)}, 4, np.arange(10)[::-1], first=1))
    assert [b['targets'].tolist() for b in later] == [[2, 3, 4, 5]]  # from batch 1 on (a mid-epoch resume)


class Recording(trainer.ArraySplit):
    """A split that remembers every example index it was asked for."""

    def __init__(self, arrays):
        super().__init__(arrays)
        self.asked = []

    def batches(self, index_batches):
        index_batches = [np.asarray(index) for index in index_batches]
        self.asked += [index for index in index_batches]
        return super().batches(index_batches)


def test_only_the_first_train_examples_are_trained_on(tmp_path):
    splits = [Recording(majority_task(n, seed=i)) for i, n in enumerate((100, 20, 20))]
    config = dataclasses.replace(TINY, max_seq_len=15, vocab_size=3, num_classes=2, epochs=2, train_examples=37,
                                 eval_examples=9, workdir=str(tmp_path / 'w'))
    trainer.run(config, lambda _: splits)
    train_asked = np.concatenate(splits[0].asked[1:])  # the first request is one example, to build the model
    per_epoch = np.split(train_asked, 2)
    for asked in per_epoch:  # 4 global batches of 8 of the 37: each example at most once, all of them below 37
        assert len(asked) == 32 and len(set(asked.tolist())) == 32 and asked.max() < 37
    assert set(np.concatenate(per_epoch).tolist()) == set(range(37))  # two epochs' orders cover all 37
    for split in splits[1:]:
        assert sorted(np.concatenate(split.asked).tolist()) == sorted(list(range(9)) * 2)  # valid/test: 9, per epoch


# ---------------------------------------------------------------- the learning-rate schedule of every task

SCRIPTS = {'listops': ('listops', 'config', 98_000, 0.9), 'text': ('text', 'config', 50_000, 0.9),
           'retrieval': ('retrieval', 'config', 147_072 + 17_408, 0.9), 'image': ('image', 'config', 60_000, 0.95),
           'pathfinder': ('pathfinder', 'pathfinder32', 160_000 + 19_968, 0.95),
           'pathx': ('pathfinder', 'pathx', 160_000 + 19_968, 0.95), 'ember': ('ember', 'config', 800_000, 0.85)}


@pytest.mark.parametrize('task', sorted(SCRIPTS))
def test_learning_rate_after_k_epochs_is_the_originals(task):
    folder, name, N, rate = SCRIPTS[task]
    config = getattr(importlib.import_module(f'{folder}.hrrformer_mgpu'), name)
    assert (config.decay_examples, config.lr_decay, config.lr, config.end_lr) == (N, rate, 1e-3, 1e-5)
    for n, global_batch in ((N // 2, 16), (24_000, 8), (1_600, 32)):  # fewer examples than N: the decay stays per example
        _, schedule = trainer.make_optimizer(config, trainer.decay_steps(config, n, global_batch))
        steps_per_epoch = n // global_batch
        for k in (1, 2, 5, 20):
            lr = float(schedule(k * steps_per_epoch))
            # the original: optax.exponential_decay(1e-3, N // G, rate, transition_begin=1, end_value=1e-5)
            original = max(1e-3 * rate ** ((k * steps_per_epoch - 1) / (N // global_batch)), 1e-5)
            assert lr == pytest.approx(original, rel=1e-5)
            assert lr == pytest.approx(max(1e-3 * rate ** (k * n / N), 1e-5), rel=2e-3)
    assert float(schedule(0)) == float(schedule(1)) == pytest.approx(1e-3)  # transition_begin=1
    unset = dataclasses.replace(config, decay_examples=None)  # unset: lr_decay per epoch of the examples used
    _, schedule = trainer.make_optimizer(unset, trainer.decay_steps(unset, 800, 8))
    assert float(schedule(1 + 3 * 100)) == pytest.approx(max(1e-3 * rate ** 3, 1e-5), rel=1e-6)
    _, constant = trainer.make_optimizer(dataclasses.replace(config, lr_decay=1.0), 100)  # no decay: lr throughout
    assert [float(constant(step)) for step in (0, 1, 10_000)] == pytest.approx([1e-3] * 3)


def test_history_records_the_learning_rate_of_the_schedule(tmp_path):
    config = dataclasses.replace(TINY, max_seq_len=15, vocab_size=3, num_classes=2, epochs=2, decay_examples=48,
                                 lr_decay=0.5, workdir=str(tmp_path / 'w'))
    rows = trainer.run(config, lambda _: (majority_task(96), majority_task(8, seed=1), majority_task(8, seed=2)))
    # 96 examples, global batch 8: 12 steps per epoch, decay period 48 // 8 = 6 steps
    assert [row['learning_rate'] for row in rows] == pytest.approx([1e-3 * 0.5 ** (11 / 6), 1e-3 * 0.5 ** (23 / 6)])


# ---------------------------------------------------------------- NaN handling, as the original

def nan_model(devices, loss='cross_entropy', tx=None):
    """A linear model whose example i gives NaN when its first input is negative; one step of it."""
    def apply_fn(variables, inputs, train, rngs):
        logits = inputs[:, :3] * variables['params']['w']                          # (b, 3)
        return jax.nn.log_softmax(jnp.where(inputs[:, :1] < 0, jnp.nan, logits))
    state = train_state.TrainState.create(apply_fn=apply_fn, params={'w': jnp.array([1., 2., 3.])},
                                          tx=tx or optax.sgd(0.1))
    p_train, _ = trainer.compile_steps(dataclasses.replace(TINY, num_classes=3, loss=loss,
                                                           label_smoothing=0.0), apply_fn, devices)
    return trainer.replicate(state, devices), p_train


def batch_with_nan(rows):
    inputs = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32) ** 2 + 0.1
    inputs[rows, 0] = -1.0
    return {'inputs': inputs, 'targets': np.arange(8) % 3}


def test_a_nan_example_counts_zero_and_the_update_is_applied(devices):
    state, p_train = nan_model(devices)
    batch = batch_with_nan([5])
    after, metrics = p_train(state, trainer.shard(batch, 4), jax.random.PRNGKey(0))
    metrics = trainer.unreplicate(metrics)
    assert (float(metrics['nan']), float(metrics['count'])) == (1, 8)
    # by hand: the mean over all 8 examples of the cross-entropy, with example 5's set to 0 (the original's
    # nan_to_num); plain SGD with learning rate 0.1

    def loss(w):
        log_probs = jax.nn.log_softmax(batch['inputs'] * w)
        losses = -log_probs[np.arange(8), batch['targets']]
        return jnp.sum(jnp.where(np.arange(8) == 5, 0., losses)) / 8
    w = jnp.array([1., 2., 3.])
    np.testing.assert_allclose(trainer.unreplicate(after.params)['w'], w - 0.1 * jax.grad(loss)(w), rtol=1e-5)
    assert float(metrics['loss']) == pytest.approx(8 * float(loss(w)), rel=1e-5)  # the sum of the 7 others


def test_an_all_nan_batch_is_a_zero_gradient_that_adam_still_counts(devices):
    state, p_train = nan_model(devices, tx=optax.adam(0.1))
    after, metrics = p_train(state, trainer.shard(batch_with_nan(list(range(8))), 4), jax.random.PRNGKey(0))
    metrics = trainer.unreplicate(metrics)
    assert (float(metrics['nan']), float(metrics['count']), float(metrics['loss'])) == (8, 8, 0)
    after = trainer.unreplicate(after)
    np.testing.assert_array_equal(after.params['w'], [1., 2., 3.])  # zero gradient: no move
    assert int(after.step) == 1 and int(after.opt_state[0].count) == 1  # the step was applied


@jax.custom_vjp
def poison(x, flag):
    """Identity forward; backward, NaN gradients for the rows where `flag` is set (the loss stays finite)."""
    return x


poison.defvjp(lambda x, flag: (x, flag), lambda flag, g: (jnp.where(flag, jnp.nan, g), None))


@pytest.mark.parametrize('loss', ['cross_entropy', 'binary_cross_entropy'])
def test_nan_gradients_are_zeroed_per_device_or_after_the_average(devices, loss):
    """LRA scripts zero NaN gradients on each device, then average; the EMBER script (binary cross-entropy)
    averages first, so one device's NaN zeroes the whole update."""
    def apply_fn(variables, inputs, train, rngs):
        logits = poison(inputs[:, :3] * variables['params']['w'], inputs[:, :1] < 0)
        return jax.nn.log_softmax(logits)
    state = train_state.TrainState.create(apply_fn=apply_fn, params={'w': jnp.array([1., 2., 3.])}, tx=optax.sgd(0.1))
    config = dataclasses.replace(TINY, num_classes=3, loss=loss, label_smoothing=0.0)
    p_train, _ = trainer.compile_steps(config, apply_fn, devices)
    batch = batch_with_nan([2])  # device 1 holds examples 2 and 3
    after, metrics = p_train(trainer.replicate(state, devices), trainer.shard(batch, 4), jax.random.PRNGKey(0))
    assert float(trainer.unreplicate(metrics)['nan']) == 0  # the losses are finite: only gradients are NaN
    w = jnp.array([1., 2., 3.])
    if loss == 'binary_cross_entropy':
        np.testing.assert_array_equal(trainer.unreplicate(after.params)['w'], w)
        return

    def device_loss(w, rows):  # each device's mean loss over its two examples
        log_probs = jax.nn.log_softmax(batch['inputs'][rows] * w)
        return -jnp.mean(log_probs[np.arange(2), batch['targets'][rows]])
    grads = [jax.grad(device_loss)(w, np.arange(2 * d, 2 * d + 2)) for d in (0, 2, 3)]  # device 1's: zeroed
    np.testing.assert_allclose(trainer.unreplicate(after.params)['w'], w - 0.1 * sum(grads) / 4, rtol=1e-5)


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


# ---------------------------------------------------------------- labels and subsets

def test_labels_outside_the_classes_stop_the_run(tmp_path):
    bad = majority_task(32)
    bad['targets'][3] = 5
    config = dataclasses.replace(TINY, max_seq_len=15, vocab_size=3, num_classes=2, workdir=str(tmp_path / 'w'))
    with pytest.raises(UserError, match='training labels run from 0 to 5, not within 0..1'):
        trainer.run(config, lambda _: (bad, majority_task(8), majority_task(8)))


def test_a_subset_of_a_split_ordered_by_class_is_refused(tmp_path):
    ordered = majority_task(64)
    order = np.argsort(ordered['targets'], kind='stable')
    ordered = {key: value[order] for key, value in ordered.items()}
    config = dataclasses.replace(TINY, max_seq_len=15, vocab_size=3, num_classes=2, workdir=str(tmp_path / 'w'))
    with pytest.raises(UserError, match='first 24 test examples are all of class 0.*not be a fair sample'):
        trainer.run(dataclasses.replace(config, eval_examples=24), lambda _: (majority_task(32), majority_task(8), ordered))
    trainer.run(dataclasses.replace(config, eval_examples=3), lambda _: (majority_task(32), majority_task(8), ordered))
