"""Learning at all: one layer of HRR attention, trained by the real pmap step on 4 devices, solves a small
task in a fixed number of steps. Fails when the update goes the wrong way or nowhere, and when the CLS
token cannot see the sequence."""
import jax
import numpy as np
import pytest

import trainer
from hrrformer import build_model

LENGTH, POSITION, STEPS, GLOBAL_BATCH = 16, 14, 200, 32  # 200 steps: 16 of 16 seeds learn (120: 15)


def task(rng, n):
    """Random tokens 1..4; the label is whether the token at POSITION (near the end) is 3 or 4.
    Mean pooling dilutes that one position 16-fold; the CLS output sees the sequence only through one
    softmax weight per head (its own, HRR attention rescales each position's own value), so it must
    learn to make the other positions' scores depend on that token."""
    x = rng.integers(1, 5, size=(n, LENGTH)).astype(np.int32)
    return {'inputs': x, 'targets': (x[:, POSITION] >= 3).astype(np.int32)}


MODELS = {  # each with its task family's loss and dropout
    'mean-pooled': dict(block='A', label_smoothing=0.1),                                                   # LRA
    'cls': dict(block='B', use_bias=True, activation='relu', cls_token=True, loss='binary_cross_entropy',  # EMBER
                label_smoothing=0.0),
}


@pytest.mark.parametrize('name', MODELS)
def test_one_layer_learns_the_token_far_from_the_start(name, devices):
    config = trainer.Config(task='learn', vocab_size=5, num_classes=2, max_seq_len=LENGTH, n_layer=1, embed_size=32,
                            heads=4, mlp_ratio=1.0, dropout_rate=0.1, batch_size=GLOBAL_BATCH // 4, lr=3e-3,
                            lr_decay=0.99, **MODELS[name])
    rng = np.random.default_rng(0)
    held_out = task(np.random.default_rng(1), 512)
    model = build_model(config)
    state, _ = trainer.init_state(config, model, held_out, steps_per_decay=STEPS)
    p_train, p_eval = trainer.compile_steps(config, model.apply, devices)
    state = trainer.replicate(state, devices)
    before, _ = trainer.evaluate(p_eval, state.params, held_out, GLOBAL_BATCH, 4)
    metrics = []
    for step in range(STEPS):  # a fresh batch every step
        state, step_metrics = p_train(state, trainer.shard(task(rng, GLOBAL_BATCH), 4), jax.random.PRNGKey(step))
        metrics.append(step_metrics)
    losses = [float(m['loss'][0] / m['count'][0]) for m in metrics]
    after, _ = trainer.evaluate(p_eval, state.params, held_out, GLOBAL_BATCH, 4)
    assert before < 80, f'the untrained model already gets {before:.1f}%: the task is too easy to show learning'
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10]), f'loss {losses[:10]} ... {losses[-10:]}'
    assert after >= 95, f'{after:.1f}% on held-out data after {STEPS} steps'
