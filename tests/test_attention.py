"""hrr_attention against the HRR library's own binding, unbinding and cosine similarity."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from HRR.with_jax import binding, cosine_similarity, unbinding

from hrrformer import hrr_attention


def reference_attention(q, k, v, mask=None):
    """The paper's formula, step by step, with the HRR library (time domain, complex FFTs)."""
    beta = jnp.sum(binding(k, v, axis=-1), axis=-2, keepdims=True)         # (B, h, 1, H')
    vhat = unbinding(beta, q, axis=-1)                                     # (B, h, T, H')
    score = cosine_similarity(v, vhat, axis=-1, keepdims=True)             # (B, h, T, 1)
    if mask is not None:
        score = score + (1. - mask[:, None, :, None]) * (-1e9)
    return jax.nn.softmax(score, axis=-2) * v


def inputs(features, seed=0, shape=(2, 3, 40)):
    keys = jax.random.split(jax.random.PRNGKey(seed), 3)
    q, k, v = (jax.random.normal(key, shape + (features,)) for key in keys)
    lengths = jnp.array([[25], [40]])
    mask = (jnp.arange(shape[2])[None, :] < lengths).astype(jnp.float32)  # (B, T): one padded row
    return q, k, v, mask


def relative_error(a, b):
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


@pytest.mark.parametrize('features', [32, 33, 64])
@pytest.mark.parametrize('masked', [False, True])
def test_matches_hrr_library(features, masked):
    q, k, v, mask = inputs(features)
    mask = mask if masked else None
    assert relative_error(hrr_attention(q, k, v, mask), reference_attention(q, k, v, mask)) < 1e-5

    def loss(fn):  # a scalar that depends on every output element non-trivially
        return lambda q, k, v: jnp.sum(jnp.sin(3 * fn(q, k, v, mask)))
    ours = jax.grad(loss(hrr_attention), argnums=(0, 1, 2))(q, k, v)
    theirs = jax.grad(loss(reference_attention), argnums=(0, 1, 2))(q, k, v)
    for name, a, b in zip('qkv', ours, theirs):
        assert relative_error(a, b) < 1e-5, f'gradient with respect to {name}'


def test_masked_positions_are_zero_but_their_keys_still_count():
    q, k, v, mask = inputs(32)
    out = hrr_attention(q, k, v, mask)
    assert np.all(np.asarray(out[0, :, 25:]) == 0.0)  # exactly zero where the mask is 0
    assert np.all(np.asarray(out[0, :, :25]) != 0.0)
    # the faithful quirk: padded keys and values are still in the superposition beta
    k2 = k.at[0, :, 30].set(k[0, :, 30] + 1.0)
    out2 = hrr_attention(q, k2, v, mask)
    assert relative_error(out2[0, :, :25], out[0, :, :25]) > 1e-4
    np.testing.assert_array_equal(np.asarray(out2[1]), np.asarray(out[1]))  # other examples untouched


def test_softmax_runs_over_time():
    q, k, v, _ = inputs(16)
    out = hrr_attention(q, k, v)
    weights = out / v                                                       # (B, h, T, H'): w_t repeated
    np.testing.assert_allclose(np.asarray(jnp.sum(weights[..., 0], axis=-1)), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(weights[..., 0]), np.asarray(weights[..., 5]), rtol=1e-4)


def test_dtype_is_kept():
    q, k, v, mask = inputs(16)
    out = hrr_attention(*(x.astype(jnp.bfloat16) for x in (q, k, v)), mask)
    assert out.dtype == jnp.bfloat16
    assert relative_error(out.astype(jnp.float32), reference_attention(q, k, v, mask)) < 2e-2


def test_softmax_baseline_is_plain_dot_product_attention():
    from hrrformer import softmax_attention
    q, k, v, mask = inputs(8, shape=(2, 3, 6))
    mask = jnp.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], jnp.float32)
    scores = jnp.einsum('bhqd,bhkd->bhqk', q, k) / jnp.sqrt(8.0)                  # (B, h, T, T)
    scores = jnp.where(mask[:, None, None, :] > 0, scores, -jnp.inf)
    expected = jnp.einsum('bhqk,bhkd->bhqd', jax.nn.softmax(scores, axis=-1), v)
    np.testing.assert_allclose(np.asarray(softmax_attention(q, k, v, mask)), np.asarray(expected), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(softmax_attention(q, k, v)),
                               np.asarray(jnp.einsum('bhqk,bhkd->bhqd', jax.nn.softmax(
                                   jnp.einsum('bhqd,bhkd->bhqk', q, k) / jnp.sqrt(8.0), -1), v)), rtol=1e-5, atol=1e-6)
