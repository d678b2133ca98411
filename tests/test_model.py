"""The shared model: each block style and the whole model against a numpy version written from paper.md,
dropout, embeddings, heads."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from embed import Embedding, sinusoid_table
from hrrformer import Encoder, EncoderBlock, build_model
import trainer
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


# ----------------------------------------------------------------------------- the paper's blocks, by hand
# A numpy (float64) model written from paper.md alone, run on the module's own (randomised) parameters.

def np_layer_norm(x, p):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-6) * p['scale'] + p['bias']


def np_dense(x, p):
    return x @ p['kernel'] + p.get('bias', 0.)


NP_ACTIVATIONS = {'relu': lambda x: np.maximum(x, 0.),  # flax's GELU is the tanh approximation
                  'gelu': lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))}


def np_hrr(q, k, v, mask):
    """The paper's attention in the time domain: bind = circular convolution, inverse = roll(flip)."""
    def bind(a, b):
        return np.fft.ifft(np.fft.fft(a, axis=-1) * np.fft.fft(b, axis=-1), axis=-1).real
    beta = bind(k, v).sum(-2, keepdims=True)                                   # (B, h, 1, H')
    vhat = bind(beta, np.roll(np.flip(q, -1), 1, axis=-1))                     # (B, h, T, H')
    score = (v * vhat).sum(-1) / (np.linalg.norm(v, axis=-1) * np.linalg.norm(vhat, axis=-1))
    if mask is not None:
        score = score + (1 - mask[:, None, :]) * -1e9
    w = np.exp(score - score.max(-1, keepdims=True))
    return (w / w.sum(-1, keepdims=True))[..., None] * v                        # softmax over time


def np_attention(x, p, heads, mask):
    b, t, e = x.shape
    q, k, v = (np_dense(x, p[n]).reshape(b, t, heads, e // heads).transpose(0, 2, 1, 3)
               for n in ('query', 'key', 'value'))
    return np_dense(np_hrr(q, k, v, mask).transpose(0, 2, 1, 3).reshape(b, t, e), p['output'])


def np_block(x, p, style, heads, mask, activation):
    """One layer of style A, B, C or D, literally as paper.md writes it (dropout off)."""
    def attn(y):
        return np_attention(y, p['SelfAttention_0'], heads, mask)

    def mlp(y):
        return np_dense(NP_ACTIVATIONS[activation](np_dense(y, p['MLP_0']['Dense_0'])), p['MLP_0']['Dense_1'])

    def ln(i, y):
        return np_layer_norm(y, p[f'LayerNorm_{i}'])
    if style in 'AD':
        x = x + attn(x)
        return x + mlp(ln(0, x))
    if style == 'B':
        x = x + attn(ln(0, x))
        return x + mlp(ln(1, x))
    x = ln(0, x + attn(x))
    return ln(1, x + mlp(x))


def np_encoder(p, ids, config):
    t, e = ids.shape[1], config.embed_size
    x = p['Embedding_0']['token']['embedding'][ids]
    if config.positions == 'learned':
        x = x + p['Embedding_0']['position']['embedding'][:t]
    else:  # sin on even features, cos on odd ones, base 10000
        angle = np.arange(t)[:, None] / 10000 ** (2 * (np.arange(e) // 2) / e)
        x = x + np.where(np.arange(e) % 2 == 0, np.sin(angle), np.cos(angle))
    mask = (ids > 0).astype(np.float64) if config.use_mask else None
    if config.cls_token:
        x = np.concatenate([np.broadcast_to(p['cls_token'], (len(ids), 1, e)), x], axis=1)
        mask = None if mask is None else np.concatenate([np.ones((len(ids), 1)), mask], axis=1)
    if config.block == 'A':
        x = np_layer_norm(x, p['LayerNorm_0'])
    for i in range(config.n_layer):
        x = np_block(x, p[f'EncoderBlock_{i}'], config.block, config.heads, mask, config.activation)
    return x[:, 0] if config.cls_token else x.mean(1)  # the mean includes padded positions


def np_classifier(p, config, *inputs):
    pooled = [np_encoder(p['encoder'], np.asarray(x), config) for x in inputs]
    x = pooled[0] if len(pooled) == 1 else np.concatenate(
        [pooled[0], pooled[1], pooled[0] * pooled[1], pooled[0] - pooled[1]], axis=-1)
    head = p['ClassifierHead_0']
    logits = np_dense(NP_ACTIVATIONS[config.activation](np_dense(x, head['Dense_0'])), head['Dense_1'])
    return logits - np.log(np.exp(logits).sum(-1, keepdims=True))


def randomised(params, seed=1):
    """Every parameter moved off its initial value (LayerNorm scale 1, biases 0 would hide mistakes)."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree.unflatten(tree, [leaf + 0.3 * jax.random.normal(key, leaf.shape)
                                     for leaf, key in zip(leaves, keys)])


def as_numpy(params):
    return jax.tree.map(lambda leaf: np.asarray(leaf, np.float64), params)


def assert_matches(out, expected):
    """float32 against float64: the differences measured are below 1e-6 of the largest value."""
    error = np.abs(np.asarray(out, np.float64) - expected).max()
    assert error <= 2e-5 * np.abs(expected).max(), f'largest difference {error:.2e}'


@pytest.mark.parametrize('style', 'ABCD')
@pytest.mark.parametrize('use_bias, activation', [(False, 'gelu'), (True, 'relu')])
def test_one_layer_is_the_papers_block(style, use_bias, activation):
    block = EncoderBlock(16, 2, mlp_hidden=8, dropout_rate=0.1, style=style, use_bias=use_bias, activation=activation)
    x = jax.random.normal(jax.random.PRNGKey(2), (3, 24, 16))
    mask = (ids() > 0).astype(jnp.float32)
    params = randomised(block.init(jax.random.PRNGKey(0), x, mask, False)['params'])
    out = block.apply({'params': params}, x, mask, False)
    expected = np_block(np.asarray(x, np.float64), as_numpy(params), style, 2, np.asarray(mask), activation)
    assert_matches(out, expected)


MODELS = {  # block, positions, mask, head, EMBER's options (bias, ReLU, CLS)
    'A': dict(block='A'), 'B': dict(block='B', positions='fixed'), 'C': dict(block='C', use_mask=False),
    'D': dict(block='D', use_mask=False), 'A-dual': dict(block='A', positions='fixed', head='dual'),
    'B-ember': dict(block='B', use_bias=True, activation='relu', cls_token=True)}


@pytest.mark.parametrize('name', MODELS)
def test_whole_model_is_the_papers(name):
    config = dataclasses.replace(TINY, dropout_rate=0.1, **MODELS[name])
    inputs = (ids(),) if config.head == 'single' else (ids(), ids(seed=1))
    model, params = init(config, *inputs)
    params = randomised(params)
    out = model.apply({'params': params}, *inputs)  # train=False: no dropout
    assert_matches(out, np_classifier(as_numpy(params), config, *inputs))


# ----------------------------------------------------------------------------- dropout

def dropout_sites(model, variables, inputs, train, rngs=None):
    """(module path, rate, active) of every Dropout the forward pass calls."""
    found = []

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, nn.Dropout) and context.method_name == '__call__':
            active = not nn.merge_param('deterministic', context.module.deterministic, kwargs.get('deterministic'))
            found.append(('/'.join(context.module.path), context.module.rate, active))
        return next_fun(*args, **kwargs)
    with nn.intercept_methods(record):
        model.apply(variables, *inputs, train=train, rngs=rngs)
    return found


@pytest.mark.parametrize('block', 'ABCD')
def test_dropout_after_embedding_attention_and_mlp_only_in_training(block):
    config = dataclasses.replace(TINY, block=block, dropout_rate=0.1)
    model, params = init(config, ids())
    expected = [('encoder/Dropout_0', 0.1)] + [
        (f'encoder/EncoderBlock_{i}/{site}', 0.1) for i in range(2) for site in ('Dropout_0', 'MLP_0/Dropout_0')]
    train = dropout_sites(model, {'params': params}, (ids(),), True, {'dropout': jax.random.PRNGKey(0)})
    assert sorted(train) == sorted((path, rate, True) for path, rate in expected)
    assert sorted(dropout_sites(model, {'params': params}, (ids(),), False)) == \
        sorted((path, rate, False) for path, rate in expected)


def test_dropout_acts_in_training_only():
    config = dataclasses.replace(TINY, dropout_rate=0.1)
    model, params = init(config, ids())
    variables = {'params': params}

    def apply(train, key=None, model=model):
        return np.asarray(model.apply(variables, ids(), train=train, rngs=None if key is None else {'dropout': key}))
    one, two = apply(True, jax.random.PRNGKey(1)), apply(True, jax.random.PRNGKey(2))
    deterministic = apply(False)
    assert np.abs(one - two).max() > 1e-3 and np.abs(one - deterministic).max() > 1e-3
    np.testing.assert_array_equal(apply(True, jax.random.PRNGKey(1)), one)  # the key decides
    np.testing.assert_array_equal(apply(False), deterministic)
    without = build_model(dataclasses.replace(config, dropout_rate=0.0))
    np.testing.assert_array_equal(apply(False, model=without), deterministic)
    np.testing.assert_array_equal(apply(True, jax.random.PRNGKey(1), model=without), deterministic)


def test_train_step_trains_the_dropped_out_model(devices):
    config = dataclasses.replace(TINY, dropout_rate=0.1)
    batch = {'inputs': np.asarray(ids(batch=8)), 'targets': np.arange(8) % 10}
    model = build_model(config)
    state, _ = trainer.init_state(config, model, batch, steps_per_decay=1)
    log_probs = model.apply({'params': state.params}, batch['inputs'])  # train=False
    deterministic = float(jnp.sum(trainer.per_example_loss(log_probs, batch['targets'], 10, config.label_smoothing)))
    p_train, _ = trainer.compile_steps(config, model.apply, devices)
    state = trainer.replicate(state, devices)
    losses = [float(trainer.unreplicate(p_train(state, trainer.shard(batch, 4), jax.random.PRNGKey(key))[1])['loss'])
              for key in (0, 1)]
    assert abs(losses[0] - losses[1]) > 1e-4                     # the key draws the dropout masks
    assert min(abs(loss - deterministic) for loss in losses) > 1e-4
