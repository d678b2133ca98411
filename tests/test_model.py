"""The shared model: block styles, embeddings, heads, and the paper's full ListOps configuration."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from embed import Embedding, sinusoid_table
from hrrformer import Encoder, build_model
from trainer import Config, count_params

TINY = Config(task='tiny', vocab_size=17, num_classes=10, max_seq_len=24, n_layer=2, embed_size=16, heads=2,
              dropout_rate=0.0, batch_size=2)


def ids(batch=3, length=24, seed=0):
    x = np.random.default_rng(seed).integers(1, 17, size=(batch, length))
    x[0, length // 2:] = 0  # a padded example
    return jnp.asarray(x)


def init(config, *inputs):
    model = build_model(config)
    return model, model.init(jax.random.PRNGKey(0), *inputs)['params']


@pytest.mark.parametrize('block, norms', [('A', 1 + 2), ('B', 2 * 2), ('C', 2 * 2), ('D', 2)])
def test_block_styles(block, norms):
    config = dataclasses.replace(TINY, block=block)
    model, params = init(config, ids())
    found = [path for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]
             if 'LayerNorm' in jax.tree_util.keystr(path) and 'scale' in jax.tree_util.keystr(path)]
    assert len(found) == norms  # A: after the embedding + 1 per layer; B, C: 2 per layer; D: 1 per layer
    log_probs = model.apply({'params': params}, ids())
    assert log_probs.shape == (3, 10)
    np.testing.assert_allclose(np.exp(np.asarray(log_probs)).sum(-1), 1.0, rtol=1e-5)


def test_post_ln_block_ends_normalised():
    encoder = Encoder(17, 24, 16, 2, n_layer=1, mlp_hidden=8, dropout_rate=0.0, block='C')
    variables = encoder.init(jax.random.PRNGKey(0), ids(), False)
    out = np.asarray(encoder.apply(variables, ids(), False))
    np.testing.assert_allclose(out.mean(-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.std(-1), 1.0, rtol=1e-3)


def test_mlp_width_is_configuration():
    _, half = init(dataclasses.replace(TINY, mlp_ratio=0.5), ids())
    _, double = init(dataclasses.replace(TINY, mlp_ratio=2.0), ids())
    assert half['encoder']['EncoderBlock_0']['MLP_0']['Dense_0']['kernel'].shape == (16, 8)
    assert double['encoder']['EncoderBlock_0']['MLP_0']['Dense_0']['kernel'].shape == (16, 32)
    assert 'bias' not in half['encoder']['EncoderBlock_0']['MLP_0']['Dense_1']  # second Dense: no bias
    assert 'bias' not in half['encoder']['EncoderBlock_0']['SelfAttention_0']['query']


def test_two_towers_share_the_encoder():
    single_model, single = init(TINY, ids())
    dual_model, dual = init(dataclasses.replace(TINY, head='dual'), ids(), ids(seed=1))
    assert count_params(dual['encoder']) == count_params(single['encoder'])
    extra_head_inputs = 3 * 16 * 16  # [m1, m2, m1*m2, m1-m2] is 4E wide instead of E
    assert count_params(dual) == count_params(single) + extra_head_inputs
    out = dual_model.apply({'params': dual}, ids(), ids(seed=1))
    swapped = dual_model.apply({'params': dual}, ids(seed=1), ids())
    assert out.shape == (3, 10) and not np.allclose(out, swapped)  # the head tells the towers apart


def test_fixed_positions_are_the_sinusoid_table_and_not_trained():
    table = sinusoid_table(50, 8)
    np.testing.assert_allclose(table[0], [0, 1, 0, 1, 0, 1, 0, 1])
    np.testing.assert_allclose(table[7, 2], np.sin(7 / 10000 ** (2 / 8)), rtol=1e-6)
    np.testing.assert_allclose(table[7, 3], np.cos(7 / 10000 ** (2 / 8)), rtol=1e-6)
    fixed = Embedding(17, 8, 50, positions='fixed')
    variables = fixed.init(jax.random.PRNGKey(0), ids(length=20))
    assert list(variables['params']) == ['token']
    out = fixed.apply(variables, ids(length=20))
    tokens = variables['params']['token']['embedding'][ids(length=20)]
    np.testing.assert_allclose(np.asarray(out - tokens), np.broadcast_to(table[:20], (3, 20, 8)), atol=1e-6)
    learned = Embedding(17, 8, 50, positions='learned')
    assert learned.init(jax.random.PRNGKey(0), ids(length=20))['params']['position']['embedding'].shape == (50, 8)


def test_image_tasks_use_no_mask():
    x = ids()
    _, params = init(TINY, x)
    masked = build_model(TINY).apply({'params': params}, x)
    unmasked = build_model(dataclasses.replace(TINY, use_mask=False)).apply({'params': params}, x)
    np.testing.assert_allclose(masked[1:], unmasked[1:], rtol=1e-5)  # rows without padding: same
    assert not np.allclose(masked[0], unmasked[0])                   # the padded row: different


def test_ember_options_are_configuration():
    config = dataclasses.replace(TINY, use_bias=True, activation='relu', cls_token=True, block='B', n_layer=1)
    model, params = init(config, ids())
    block = params['encoder']['EncoderBlock_0']
    assert params['encoder']['cls_token'].shape == (1, 1, 16)
    assert all('bias' in block['SelfAttention_0'][name] for name in ('query', 'key', 'value', 'output'))
    assert 'bias' in block['MLP_0']['Dense_1']
    out = model.apply({'params': params}, ids())
    assert out.shape == (3, 10)
    # the head reads the output at the CLS position (not the mean over time)
    encoder = build_model(config).encoder
    hidden = encoder.apply({'params': params['encoder']}, ids(), False)
    assert hidden.shape == (3, 25, 16)  # 1 + T positions
    from hrrformer import ClassifierHead
    head = ClassifierHead(16, 10, 'relu').apply({'params': params['ClassifierHead_0']}, hidden[:, 0])
    np.testing.assert_allclose(np.asarray(head), np.asarray(out), rtol=1e-5, atol=1e-6)
