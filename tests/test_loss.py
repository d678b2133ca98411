"""The training loss on known inputs: label-smoothed cross-entropy (LRA) and EMBER's clipped binary
cross-entropy, by hand and as the train step reports it."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import trainer
from hrrformer import build_model


def loss(probs, targets, num_classes, smoothing, kind='cross_entropy'):
    log_probs = jnp.log(jnp.asarray(probs, jnp.float32))
    return np.asarray(trainer.per_example_loss(log_probs, jnp.asarray(targets), num_classes, smoothing, kind))


def test_label_smoothed_cross_entropy_by_hand():
    # smoothing a = 0.1 over C = 3 classes: the target gets 0.9 + 0.1/3, the others 0.1/3 each
    probs = [[0.7, 0.2, 0.1], [0.7, 0.2, 0.1]]
    expected = [-(0.9 + 0.1 / 3) * np.log(0.7) - 0.1 / 3 * (np.log(0.2) + np.log(0.1)),   # = 0.4632974
                -(0.9 + 0.1 / 3) * np.log(0.1) - 0.1 / 3 * (np.log(0.7) + np.log(0.2))]   # = 2.2146165
    np.testing.assert_allclose(loss(probs, [0, 2], 3, 0.1), [0.4632974, 2.2146165], rtol=1e-6)
    np.testing.assert_allclose(expected, [0.4632974, 2.2146165], rtol=1e-6)
    np.testing.assert_allclose(loss(probs, [0, 2], 3, 0.0), [-np.log(0.7), -np.log(0.1)], rtol=1e-6)


def test_label_smoothing_is_labels_times_one_minus_a_plus_a_over_classes():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(10), size=6)
    targets = rng.integers(0, 10, size=6)
    labels = np.eye(10)[targets] * (1 - 0.1) + 0.1 / 10
    np.testing.assert_allclose(loss(probs, targets, 10, 0.1), -(labels * np.log(probs)).sum(-1), rtol=1e-5)


def test_binary_cross_entropy_by_hand():
    # sum over both classes of -y log p - (1 - y) log(1 - p), every term clipped to [1e-10, 1]
    np.testing.assert_allclose(loss([[0.9, 0.1]], [0], 2, 0.0, 'binary_cross_entropy'), [-2 * np.log(0.9)], rtol=1e-6)
    # certain and wrong: log(1e-10) twice, not infinity
    np.testing.assert_allclose(loss([[1.0, 0.0]], [1], 2, 0.0, 'binary_cross_entropy'), [46.0517019], rtol=1e-6)


TINY = trainer.Config(task='tiny', vocab_size=17, num_classes=3, max_seq_len=16, n_layer=1, embed_size=16, heads=2,
                      dropout_rate=0.0, batch_size=2)


@pytest.mark.parametrize('kind, num_classes, smoothing', [('cross_entropy', 3, 0.1), ('binary_cross_entropy', 2, 0.0)])
def test_train_step_reports_the_configured_loss(kind, num_classes, smoothing, devices):
    config = dataclasses.replace(TINY, loss=kind, num_classes=num_classes, label_smoothing=smoothing)
    rng = np.random.default_rng(0)
    batch = {'inputs': rng.integers(1, 17, size=(8, 16)).astype(np.int32), 'targets': np.arange(8) % num_classes}
    model = build_model(config)
    state, _ = trainer.init_state(config, model, batch, steps_per_decay=1)
    probs = np.exp(np.asarray(model.apply({'params': state.params}, batch['inputs']), np.float64))   # (8, C)
    labels = np.eye(num_classes)[batch['targets']] * (1 - smoothing) + smoothing / num_classes
    if kind == 'cross_entropy':
        expected = -(labels * np.log(probs)).sum(-1)
    else:
        expected = -(labels * np.log(probs) + (1 - labels) * np.log(1 - probs)).sum(-1)
    p_train, _ = trainer.compile_steps(config, model.apply, devices)
    _, metrics = p_train(trainer.replicate(state, devices), trainer.shard(batch, 4), jax.random.PRNGKey(0))
    metrics = trainer.unreplicate(metrics)
    assert float(metrics['count']) == 8
    np.testing.assert_allclose(float(metrics['loss']) / 8, expected.mean(), rtol=1e-5)
