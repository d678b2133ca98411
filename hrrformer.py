"""The Hrrformer model, written once: HRR attention, the MLP, encoder blocks A-D and classifier heads.

HRR attention (paper Sec. 3), per head, on q, k, v of shape (B, h, T, H'):
    beta    = sum_t bind(k_t, v_t)              bind(x, y) = ifft(fft(x) * fft(y)): circular convolution
    vhat_t  = bind(beta, inv(q_t))              inv(y) = roll(flip(y), 1): conjugate spectrum
    a_t     = cos(v_t, vhat_t) + (1 - m_t)(-1e9)
    out_t   = softmax_t(a)_t * v_t
Everything is done on real FFT spectra: the forward pass takes three rffts and no inverse transform
(the cosine is taken by Parseval's theorem), the hand-written backward pass one irfft per input; about
3x faster than the original's fft/ifft formulation (benchmarks/attention.py).

Precision (`dtype`, float32 as the paper, or bfloat16): parameters are always float32; the Dense layers
and embeddings compute in `dtype`, and the activations between layers are `dtype`. Kept in float32
whatever `dtype` is: the HRR attention (there is no half-precision FFT), LayerNorm (Flax computes it in
float32 from float32 parameters, then casts), every softmax, and the log-probabilities the model returns,
so the loss is float32 too.
"""
from functools import lru_cache, partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from embed import Embedding
from utils import merge_heads, split_heads

MASK_VALUE = -1e9  # added to the scores of padded positions, as in the original


def _parseval_weights(features, dtype):
    """Weights of the H'//2+1 rfft bins that turn sums over half a spectrum into full-spectrum sums:
    the DC bin (and the Nyquist bin when H' is even) appears once, every other bin twice (with its mirror)."""
    bins = features // 2 + 1
    weights = jnp.full((bins,), 2, dtype=dtype).at[0].set(1)
    if features % 2 == 0:
        weights = weights.at[-1].set(1)
    return weights                                                               # (F,)


def hrr_attention(q, k, v, mask=None):
    """HRR self-attention core: (B, h, T, H') q, k, v and an optional (B, T) 0/1 mask (1 = real token)
    -> the weighted values w_t * v_t, (B, h, T, H'). Padded keys still enter the superposition
    (the original's behaviour); the mask acts only in the softmax, so padded positions get exactly 0.
    Computed in at least float32 (there is no half-precision FFT); the output has v's dtype."""
    real = jnp.promote_types(v.dtype, jnp.float32)
    mask = None if mask is None else mask.astype(real)
    out = _hrr_attention(q.astype(real), k.astype(real), v.astype(real), mask)
    return out.astype(v.dtype)


def _scores(q, k, v, mask):
    """Forward pass up to the softmax weights, and what the backward pass needs."""
    features = q.shape[-1]
    fq, fk, fv = (jnp.fft.rfft(x, axis=-1) for x in (q, k, v))                    # (B, h, T, F) complex
    beta = jnp.sum(fk * fv, axis=-2, keepdims=True)                             # (B, h, 1, F) superposition
    # unbinding: the spectrum of vhat_t is beta * conj(Q_t). It is never formed or inverted: the cosine
    # needs only <v, vhat>, |v| and |vhat|, and by Parseval <x, y> = (1/H') sum X conj(Y) over the full
    # spectrum (the 1/H' cancels). Sums over bins are matrix-vector products: much faster on CPU.
    weights = _parseval_weights(features, q.dtype)                              # (F,)
    dot = (fv * fq * jnp.conj(beta)).real @ weights                             # (B, h, T) <v, vhat>
    norm2_v = (fv.real ** 2 + fv.imag ** 2) @ weights                           # (B, h, T) |v|^2
    norm2_vhat = ((beta.real ** 2 + beta.imag ** 2) * (fq.real ** 2 + fq.imag ** 2)) @ weights
    inv_v, inv_vhat = jax.lax.rsqrt(norm2_v), jax.lax.rsqrt(norm2_vhat)
    cosine = dot * inv_v * inv_vhat                                             # (B, h, T), no epsilon
    scores = cosine if mask is None else cosine + (1 - mask[:, None, :]) * MASK_VALUE
    attention = jax.nn.softmax(scores, axis=-1)                                 # (B, h, T) over time
    return attention, (fq, fk, fv, beta, cosine, norm2_v, norm2_vhat, inv_v, inv_vhat, attention)


def hrr_weights(q, k, v, mask=None):
    """The softmax weights w_t of hrr_attention, (B, h, T): what each head makes of each position."""
    real = jnp.promote_types(v.dtype, jnp.float32)
    mask = None if mask is None else mask.astype(real)
    return _scores(q.astype(real), k.astype(real), v.astype(real), mask)[0]


@jax.custom_vjp
def _hrr_attention(q, k, v, mask):
    return _scores(q, k, v, mask)[0][..., None] * v


def _hrr_attention_forward(q, k, v, mask):
    attention, saved = _scores(q, k, v, mask)
    return attention[..., None] * v, (saved, v, mask)


def _hrr_attention_backward(residuals, g):
    """The gradient written out in the frequency domain: one irfft per input, instead of the many
    complex intermediates autodiff keeps (about 1.3x faster at the ListOps shape, 2x at EMBER's).
    For a real loss and spectrum X = rfft(x) with G = dL/dRe X + i dL/dIm X, dL/dx = H' irfft(G / w);
    below every G is already divided by the Parseval weights w."""
    (fq, fk, fv, beta, cosine, norm2_v, norm2_vhat, inv_v, inv_vhat, attention), v, mask = residuals
    features = v.shape[-1]
    g_attention = jnp.einsum('...i,...i->...', g, v)                            # (B, h, T)
    g_scores = attention * (g_attention - jnp.sum(attention * g_attention, axis=-1, keepdims=True))
    g_dot = (g_scores * inv_v * inv_vhat)[..., None]                            # (B, h, T, 1)
    g_norm2_v = (-0.5 * g_scores * cosine / norm2_v)[..., None]
    g_norm2_vhat = (-0.5 * g_scores * cosine / norm2_vhat)[..., None]
    abs2_q = fq.real ** 2 + fq.imag ** 2                                        # (B, h, T, F)
    abs2_beta = beta.real ** 2 + beta.imag ** 2                                 # (B, h, 1, F)
    g_beta = jnp.sum(g_dot * fv * fq + 2 * g_norm2_vhat * abs2_q * beta, axis=-2, keepdims=True)
    g_fq = g_dot * jnp.conj(fv) * beta + 2 * g_norm2_vhat * abs2_beta * fq
    g_fk = g_beta * jnp.conj(fv)
    g_fv = g_dot * jnp.conj(fq) * beta + 2 * g_norm2_v * fv + g_beta * jnp.conj(fk)

    def to_time(spectrum):
        return features * jnp.fft.irfft(spectrum, n=features, axis=-1)         # (B, h, T, H')
    g_mask = None if mask is None else jnp.zeros_like(mask)  # the mask is data, not a parameter
    return to_time(g_fq), to_time(g_fk), to_time(g_fv) + attention[..., None] * g, g_mask


_hrr_attention.defvjp(_hrr_attention_forward, _hrr_attention_backward)


def softmax_attention(q, k, v, mask=None, impl='auto'):
    """The Transformer baseline: softmax(q k^T / sqrt(H')) v on the same (B, h, T, H') layout; padded keys
    (mask 0) get no weight. Logits and softmax are float32 whatever the inputs' dtype; the output has q's.
    impl: 'xla' (JAX's reference implementation, an explicit mask), 'cudnn' (cuDNN's fused kernel, the padding
    given as lengths), or 'auto': cuDNN on a GPU in half precision, else XLA. Where cuDNN refuses the shape,
    dtype or platform, XLA's is used and one line says so (once per shape)."""
    q, k, v = (x.transpose(0, 2, 1, 3) for x in (q, k, v))                     # (B, T, h, H')
    if wants_cudnn(impl, q.dtype) and cudnn_refusal(q.shape, q.dtype.name, mask is not None) is None:
        out = attention_by_lengths(q, k, v, mask, 'cudnn')
    else:
        key_mask = None if mask is None else (mask[:, None, None, :] > 0)       # (B, 1, 1, T)
        out = jax.nn.dot_product_attention(q, k, v, mask=key_mask, implementation='xla')
    return out.transpose(0, 2, 1, 3)                                            # (B, h, T, H')


def attention_by_lengths(q, k, v, mask, implementation):
    """Dot-product attention on (B, T, h, H') with the padding given as each example's number of keys, as
    cuDNN wants it (it is slow with an explicit mask). Exact because padding is always trailing (id 0 after
    the last real token); queries at padded positions are computed as with a key mask, not zeroed.
    Only an all-padding row (the trainer's filler rows in evaluation, of weight 0) differs: 0 keys would be
    0/0 in cuDNN, so it attends to all its keys, where a key mask with no key left gives uniform weights."""
    if mask is None:
        lengths = None
    else:
        count = jnp.sum(mask > 0, axis=-1).astype(jnp.int32)                    # (B,)
        lengths = jnp.where(count > 0, count, mask.shape[-1])
    return jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=lengths, implementation=implementation)


def wants_cudnn(impl, dtype):
    """Whether softmax attention tries cuDNN: asked for, or by default on a GPU in half precision (cuDNN's
    fused attention has no float32 kernel)."""
    if impl not in ('auto', 'xla', 'cudnn'):
        raise ValueError(f"softmax_impl must be 'auto', 'xla' or 'cudnn', not {impl!r}")
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    return impl == 'cudnn' or (impl == 'auto' and half and jax.devices()[0].platform == 'gpu')


@lru_cache(maxsize=None)
def cudnn_refusal(shape, dtype, masked):
    """None when cuDNN's attention compiles forward and backward at this (B, T, h, H') shape and dtype (name);
    otherwise why not, after printing one line. cuDNN refuses some platforms, shapes and dtypes while
    tracing, others only when compiling: a small standalone compile catches both (cached per shape)."""
    arrays = [jax.ShapeDtypeStruct(shape, jnp.dtype(dtype))] * 3
    mask = jax.ShapeDtypeStruct(shape[:2], jnp.float32) if masked else None

    def loss(q, k, v, mask):
        return jnp.sum(attention_by_lengths(q, k, v, mask, 'cudnn').astype(jnp.float32))
    try:
        jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(*arrays, mask).compile()
        return None
    except Exception as error:  # noqa: BLE001 - whatever cuDNN or XLA raises means: not here
        reason = f'{type(error).__name__}: {(str(error).strip().splitlines() or [""])[0][:200]}'
        print(f'note: cuDNN attention is not available for (B, T, h, H\') = {tuple(shape)} {dtype} on '
              f'{jax.devices()[0].platform} ({reason}); using XLA\'s softmax attention there', flush=True)
        return reason


class SelfAttention(nn.Module):
    """Dense q, k, v -> heads -> HRR (or, as a baseline, softmax) attention -> merged heads -> Dense output."""
    features: int
    heads: int
    use_bias: bool = False  # LRA tasks: no bias; EMBER: bias
    attention: str = 'hrr'
    dtype: Any = jnp.float32  # of the Dense computations (parameters stay float32)
    softmax_impl: str = 'auto'  # softmax attention only: 'auto', 'xla' or 'cudnn'

    @nn.compact
    def __call__(self, x, mask=None):                                           # x (B, T, E)
        dense = partial(nn.Dense, self.features, use_bias=self.use_bias, dtype=self.dtype)
        q, k, v = (split_heads(dense(name=name)(x), self.heads) for name in ('query', 'key', 'value'))
        attend = hrr_attention if self.attention == 'hrr' else partial(softmax_attention, impl=self.softmax_impl)
        out = attend(q, k, v, mask)                                             # (B, h, T, H')
        if self.attention == 'hrr' and self.is_mutable_collection('intermediates'):  # for weight maps only
            self.sow('intermediates', 'weights', hrr_weights(q, k, v, mask))    # (B, h, T)
        return dense(name='output')(merge_heads(out))                           # (B, T, E)


ACTIVATIONS = {'gelu': nn.gelu, 'relu': nn.relu}


class MLP(nn.Module):
    """Dense(hidden) -> activation -> Dense(E; bias only where the model uses biases) -> Dropout."""
    features: int
    hidden: int
    dropout_rate: float
    activation: str = 'gelu'
    use_bias: bool = False  # LRA: no bias on the second Dense; EMBER: bias
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train):
        x = ACTIVATIONS[self.activation](nn.Dense(self.hidden, dtype=self.dtype)(x))
        x = nn.Dense(self.features, use_bias=self.use_bias, dtype=self.dtype)(x)
        return nn.Dropout(self.dropout_rate, deterministic=not train)(x)


def layer_norm(dtype):
    """Computed in float32 (Flax promotes its statistics and the float32 parameters), returned as `dtype`."""
    return nn.LayerNorm(epsilon=1e-6, dtype=dtype)


class EncoderBlock(nn.Module):
    """One layer in the paper's style A, B, C or D (A and D differ only before the first layer)."""
    features: int
    heads: int
    mlp_hidden: int
    dropout_rate: float
    style: str = 'A'
    use_bias: bool = False
    activation: str = 'gelu'
    attention: str = 'hrr'
    dtype: Any = jnp.float32
    softmax_impl: str = 'auto'

    @nn.compact
    def __call__(self, x, mask, train):                                         # x (B, T, E)
        attend = SelfAttention(self.features, self.heads, self.use_bias, self.attention, self.dtype,
                               self.softmax_impl)
        mlp = MLP(self.features, self.mlp_hidden, self.dropout_rate, self.activation, self.use_bias, self.dtype)
        drop = nn.Dropout(self.dropout_rate, deterministic=not train)
        if self.style in ('A', 'D'):
            x = x + drop(attend(x, mask))
            return x + mlp(layer_norm(self.dtype)(x), train)
        if self.style == 'B':  # pre-LN
            x = x + drop(attend(layer_norm(self.dtype)(x), mask))
            return x + mlp(layer_norm(self.dtype)(x), train)
        if self.style == 'C':  # post-LN
            x = layer_norm(self.dtype)(x + drop(attend(x, mask)))
            return layer_norm(self.dtype)(x + mlp(x, train))
        raise ValueError(f"block style must be one of A, B, C, D, not {self.style!r}")


class Encoder(nn.Module):
    """ids (B, T) -> embedding (-> a learned CLS token in front) -> Dropout (-> LayerNorm for style A)
    -> n_layer blocks -> (B, T, E), or (B, 1 + T, E) with the CLS token."""
    vocab_size: int
    max_seq_len: int
    embed_size: int
    heads: int
    n_layer: int
    mlp_hidden: int
    dropout_rate: float
    block: str = 'A'
    positions: str = 'learned'
    use_mask: bool = True  # False where 0 is a real token (image pixels)
    use_bias: bool = False  # biases on q, k, v, output and the MLP's second Dense (EMBER)
    activation: str = 'gelu'
    cls_token: bool = False  # EMBER: a learned token (without position) before the sequence
    attention: str = 'hrr'  # 'softmax': the Transformer baseline, same blocks otherwise
    dtype: Any = jnp.float32  # of the Dense layers, the embeddings and the activations between layers
    softmax_impl: str = 'auto'  # softmax attention only: 'auto', 'xla' or 'cudnn'

    @nn.compact
    def __call__(self, ids, train):
        ids = ids.astype(jnp.int32)                                             # (B, T)
        mask = (ids > 0).astype(jnp.float32) if self.use_mask else None         # (B, T)
        x = Embedding(self.vocab_size, self.embed_size, self.max_seq_len, self.positions, self.dtype)(ids)
        if self.cls_token:
            token = self.param('cls_token', nn.initializers.lecun_normal(), (1, 1, self.embed_size))
            x = jnp.concatenate([jnp.broadcast_to(token, (x.shape[0], 1, x.shape[2])).astype(x.dtype), x], axis=1)
            mask = None if mask is None else jnp.concatenate([jnp.ones_like(mask[:, :1]), mask], axis=1)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        if self.block == 'A':
            x = layer_norm(self.dtype)(x)
        for _ in range(self.n_layer):
            x = EncoderBlock(self.embed_size, self.heads, self.mlp_hidden, self.dropout_rate, self.block,
                             self.use_bias, self.activation, self.attention, self.dtype,
                             self.softmax_impl)(x, mask, train)
        return x                                                                # (B, [1 +] T, E)


def pool(encoder, x):
    """(B, T, E) -> (B, E): the CLS token's output, or the mean over time (padding included, as the
    original)."""
    return x[:, 0] if encoder.cls_token else jnp.mean(x, axis=1)


class ClassifierHead(nn.Module):
    """(B, D) features -> Dense(E) -> activation (GELU; EMBER: ReLU) -> Dense(classes) -> log-softmax,
    float32 whatever the computing dtype (the loss is taken on it)."""
    embed_size: int
    num_classes: int
    activation: str = 'gelu'
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = ACTIVATIONS[self.activation](nn.Dense(self.embed_size, dtype=self.dtype)(x))
        logits = nn.Dense(self.num_classes, dtype=self.dtype)(x)                 # (B, classes)
        return nn.log_softmax(logits.astype(jnp.float32), axis=-1)


class Classifier(nn.Module):
    """One sequence: encoder -> pooling (mean, or the CLS token) -> head."""
    encoder: Encoder
    num_classes: int

    @nn.compact
    def __call__(self, inputs, train=False):
        x = pool(self.encoder, self.encoder(inputs, train))                     # (B, E)
        return ClassifierHead(self.encoder.embed_size, self.num_classes, self.encoder.activation,
                              self.encoder.dtype)(x)


class DualClassifier(nn.Module):
    """Two sequences through one shared encoder; the head reads [m1, m2, m1*m2, m1-m2] (retrieval)."""
    encoder: Encoder
    num_classes: int

    @nn.compact
    def __call__(self, inputs1, inputs2, train=False):
        m1 = pool(self.encoder, self.encoder(inputs1, train))                   # (B, E)
        m2 = pool(self.encoder, self.encoder(inputs2, train))                   # (B, E)
        x = jnp.concatenate([m1, m2, m1 * m2, m1 - m2], axis=-1)                # (B, 4E)
        return ClassifierHead(self.encoder.embed_size, self.num_classes, self.encoder.activation,
                              self.encoder.dtype)(x)


def build_model(config):
    """The network a task's configuration asks for (see trainer.Config for the fields)."""
    encoder = Encoder(vocab_size=config.vocab_size, max_seq_len=config.max_seq_len,
                      embed_size=config.embed_size, heads=config.heads, n_layer=config.n_layer,
                      mlp_hidden=int(config.embed_size * config.mlp_ratio), dropout_rate=config.dropout_rate,
                      block=config.block, positions=config.positions, use_mask=config.use_mask,
                      use_bias=config.use_bias, activation=config.activation, cls_token=config.cls_token,
                      attention=config.attention, dtype=jnp.dtype(config.dtype), softmax_impl=config.softmax_impl)
    head = {'single': Classifier, 'dual': DualClassifier}[config.head]
    return head(encoder=encoder, num_classes=config.num_classes)
