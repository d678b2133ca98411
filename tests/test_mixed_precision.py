"""bfloat16 compute (--dtype=bfloat16) and the softmax baseline's cuDNN path, on the CPU.

Tolerance of bfloat16 against float32: bfloat16 keeps 8 significant bits, a relative rounding error of
u = 2^-8 = 0.4% per rounding. The loss is a mean over examples of float32 log-probabilities, so its error
stays near u: we allow 1e-2 (2.5 u; measured at most 2.3e-3). A gradient passes through every rounded
activation twice (forward and backward) and through the attention's normalisation, so we allow 3e-2 (8 u)
relative in the L2 norm over all parameters (measured 5e-3 to 1.2e-2). Per parameter array the relative
error is not bounded: some gradients are 0 in exact arithmetic (a softmax ignores a key bias).
"""
import dataclasses
import importlib
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend import core as jax_core

import hrrformer
import trainer
from hrrformer import build_model

SCRIPTS = {'listops': ('listops.hrrformer_mgpu', 'config'), 'text': ('text.hrrformer_mgpu', 'config'),
           'retrieval': ('retrieval.hrrformer_mgpu', 'config'), 'image': ('image.hrrformer_mgpu', 'config'),
           'pathfinder': ('pathfinder.hrrformer_mgpu', 'pathfinder32'), 'pathx': ('pathfinder.hrrformer_mgpu', 'pathx'),
           'ember': ('ember.hrrformer_mgpu', 'config')}
LOSS_TOLERANCE, GRADIENT_TOLERANCE = 1e-2, 3e-2
T = 48


def small(task, **changes):
    """The task script's configuration with 1 layer, embed 32, T = 48."""
    module, name = SCRIPTS[task]
    config = getattr(importlib.import_module(module), name)
    return dataclasses.replace(config, **{'n_layer': 1, 'embed_size': 32, 'heads': 4, 'max_seq_len': T,
                                          'batch_size': 4, **changes})


def fixed_batch(config):
    rng = np.random.default_rng(0)
    names = ('inputs1', 'inputs2') if config.head == 'dual' else ('inputs',)
    inputs = {name: rng.integers(1, config.vocab_size, size=(4, T)).astype(np.int32) for name in names}
    inputs[names[0]][0, 30:] = 0  # a padded example
    return inputs, np.arange(4) % config.num_classes


def loss_function(config, inputs, targets):
    """params -> the training loss of one step on the fixed batch, as trainer.train_step takes it."""
    model = build_model(config)

    def loss(params):
        log_probs = model.apply({'params': params}, **inputs, train=True, rngs={'dropout': jax.random.PRNGKey(1)})
        return jnp.mean(trainer.per_example_loss(log_probs, targets, config.num_classes, config.label_smoothing,
                                                 config.loss)), log_probs
    return model, loss


def flat(tree):
    return np.concatenate([np.ravel(np.asarray(leaf, np.float64)) for leaf in jax.tree.leaves(tree)])


@pytest.mark.parametrize('task, attention', [(task, 'hrr') for task in SCRIPTS] + [('text', 'softmax')])
def test_bfloat16_step_is_close_to_float32(task, attention):
    inputs, targets = fixed_batch(small(task))
    results, params = {}, None
    for dtype in ('float32', 'bfloat16'):
        model, loss = loss_function(small(task, dtype=dtype, attention=attention), inputs, targets)
        params = params if params is not None else model.init(jax.random.PRNGKey(0), **inputs)['params']
        (value, log_probs), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
        assert log_probs.dtype == value.dtype == jnp.float32  # the loss is taken in float32
        assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(grads))
        results[dtype] = float(value), flat(grads)
    (loss32, grads32), (loss16, grads16) = results['float32'], results['bfloat16']
    assert abs(loss16 - loss32) <= LOSS_TOLERANCE * abs(loss32)
    gradient_error = np.linalg.norm(grads16 - grads32) / np.linalg.norm(grads32)
    assert gradient_error <= GRADIENT_TOLERANCE
    assert gradient_error > 1e-5  # bfloat16 really rounded something (else this test would compare float32 twice)


def equations(jaxpr):
    """Every equation of a jaxpr and of the jaxprs nested in it (jit, custom_vjp, ...)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(sub, jax_core.ClosedJaxpr):
                    yield from equations(sub.jaxpr)
                elif isinstance(sub, jax_core.Jaxpr):
                    yield from equations(sub)


def primitive_dtypes(config):
    """Counter of (primitive, operand dtypes) over one training step's forward and backward pass."""
    inputs, targets = fixed_batch(config)
    model, loss = loss_function(config, inputs, targets)
    params = model.init(jax.random.PRNGKey(0), **inputs)['params']
    jaxpr = jax.make_jaxpr(jax.value_and_grad(loss, has_aux=True))(params).jaxpr
    return Counter((eqn.primitive.name, tuple(str(v.aval.dtype) for v in eqn.invars)) for eqn in equations(jaxpr)
                   if eqn.primitive.name in ('dot_general', 'fft', 'gather'))


def test_dense_layers_compute_in_bfloat16_and_hrr_in_float32():
    # listops, 1 layer: q, k, v, output, two MLP and two head Dense layers = 8, each with three matrix
    # products per step: forward, gradient of the input, gradient of the kernel
    found = primitive_dtypes(small('listops', dtype='bfloat16'))
    assert found[('dot_general', ('bfloat16', 'bfloat16'))] == 8 * 3
    assert found[('gather', ('bfloat16', 'int32'))] >= 2  # token and position embeddings read in bfloat16
    ffts = {dtypes for name, dtypes in found if name == 'fft'}
    assert ffts == {('float32',), ('complex64',)}  # HRR attention: rfft of float32, irfft of complex64
    reference = primitive_dtypes(small('listops', dtype='float32'))
    assert not any('bfloat16' in dtypes for _, dtypes in reference)


def test_parameters_and_optimiser_state_stay_float32(devices):
    config = small('listops', dtype='bfloat16', batch_size=1)
    inputs, targets = fixed_batch(config)
    batch = dict(inputs, targets=targets)
    model = build_model(config)
    state, _ = trainer.init_state(config, model, batch, steps_per_decay=1)
    p_train, _ = trainer.compile_steps(config, model.apply, devices)
    state, metrics = p_train(trainer.replicate(state, devices), trainer.shard(batch, 4), jax.random.PRNGKey(0))
    state = trainer.unreplicate(state)
    assert int(state.step) == 1 and np.isfinite(float(trainer.unreplicate(metrics)['loss']))
    floats = [leaf for leaf in jax.tree.leaves((state.params, state.opt_state))
              if jnp.issubdtype(leaf.dtype, jnp.inexact)]
    assert len(floats) == 3 * len(jax.tree.leaves(state.params))  # parameters, Adam's two moments
    assert {leaf.dtype for leaf in floats} == {jnp.dtype(jnp.float32)}


def test_half_precision_choices():
    with pytest.raises(trainer.UserError, match="--dtype must be one of float32, bfloat16, not 'float16'"):
        trainer.check_config(trainer.Config(dtype='float16'))
    with pytest.raises(trainer.UserError, match='--softmax_impl must be one of auto, xla, cudnn'):
        trainer.check_config(trainer.Config(softmax_impl='flash'))


def attention_inputs(shape, dtype=jnp.float32):
    """q, k, v of shape (B, h, T, H') and a mask with trailing padding, one full row and one empty row."""
    q, k, v = (jax.random.normal(key, shape, dtype) for key in jax.random.split(jax.random.PRNGKey(2), 3))
    lengths = np.array([shape[2] - 3, shape[2], 0, 1][:shape[0]])
    return q, k, v, jnp.asarray(np.arange(shape[2])[None, :] < lengths[:, None], jnp.float32)


def test_padding_given_as_lengths_equals_the_key_mask():
    # what the cuDNN path computes, run through XLA: the same numbers as the explicit mask, padded queries
    # included (computed, not zeroed); an all-padding row (row 2) attends to all its keys instead of 0/0
    q, k, v, mask = attention_inputs((4, 2, 12, 8))
    expected = np.asarray(hrrformer.softmax_attention(q, k, v, mask, impl='xla'))       # (B, h, T, H')
    unmasked = np.asarray(hrrformer.softmax_attention(q, k, v, None, impl='xla'))
    turn = (lambda x: x.transpose(0, 2, 1, 3))
    got = np.asarray(turn(hrrformer.attention_by_lengths(turn(q), turn(k), turn(v), mask, 'xla')))
    rows = [0, 1, 3]
    np.testing.assert_allclose(got[rows], expected[rows], rtol=1e-6, atol=1e-6)
    assert np.abs(got[0, :, -1]).max() > 0.1  # a padded query position gets the same output, not zero
    assert np.abs(unmasked[0] - expected[0]).max() > 0.1 and np.abs(unmasked[3] - expected[3]).max() > 0.1
    np.testing.assert_allclose(got[2], unmasked[2], rtol=1e-6, atol=1e-6)


def test_cudnn_on_cpu_falls_back_to_xla_with_one_line(capsys):
    assert not hrrformer.wants_cudnn('auto', jnp.bfloat16)  # a CPU: cuDNN only when asked for
    assert hrrformer.wants_cudnn('cudnn', jnp.float32) and not hrrformer.wants_cudnn('xla', jnp.bfloat16)
    q, k, v, mask = attention_inputs((3, 2, 10, 8), jnp.bfloat16)
    xla = np.asarray(hrrformer.softmax_attention(q, k, v, mask, impl='xla').astype(jnp.float32))
    assert capsys.readouterr().out == ''
    for _ in range(2):  # the second call at the same shape says nothing more
        cudnn = np.asarray(hrrformer.softmax_attention(q, k, v, mask, impl='cudnn').astype(jnp.float32))
        np.testing.assert_array_equal(cudnn, xla)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and 'cuDNN attention is not available' in lines[0]
    assert '(3, 10, 2, 8) bfloat16 on cpu' in lines[0]
    assert "using XLA's softmax attention" in lines[0]
    hrrformer.softmax_attention(q[:, :, :7], k[:, :, :7], v[:, :, :7], mask[:, :7], impl='cudnn')  # another shape
    assert len(capsys.readouterr().out.splitlines()) == 1


def test_model_with_cudnn_asked_for_on_cpu_equals_xla(capsys):
    config = small('text', attention='softmax', dtype='bfloat16', max_seq_len=40)
    inputs = {'inputs': np.random.default_rng(3).integers(1, 257, size=(2, 40)).astype(np.int32)}
    inputs['inputs'][1, 25:] = 0
    outputs = {}
    for impl in ('xla', 'cudnn'):
        model = build_model(dataclasses.replace(config, softmax_impl=impl))
        params = model.init(jax.random.PRNGKey(0), **inputs)['params']
        outputs[impl] = np.asarray(jax.jit(model.apply)({'params': params}, **inputs))
    np.testing.assert_array_equal(outputs['cudnn'], outputs['xla'])
    notes = [line for line in capsys.readouterr().out.splitlines() if 'cuDNN' in line]
    assert len(notes) == 1 and '(2, 40, 4, 8) bfloat16' in notes[0]
