"""The Hrrformer model, written once: HRR attention, the MLP, encoder blocks A-D and classifier heads.

HRR attention (paper Sec. 3), per head, on q, k, v of shape (B, h, T, H'):
    beta    = sum_t bind(k_t, v_t)              bind(x, y) = ifft(fft(x) * fft(y)): circular convolution
    vhat_t  = bind(beta, inv(q_t))              inv(y) = roll(flip(y), 1): conjugate spectrum
    a_t     = cos(v_t, vhat_t) + (1 - m_t)(-1e9)
    out_t   = softmax_t(a)_t * v_t
Everything is done on real FFT spectra: three rffts and no inverse transform (the cosine is taken by
Parseval's theorem), which makes it several times faster than the original's fft/ifft formulation.
"""
from functools import partial

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
    (the original's behaviour); the mask acts only in the softmax, so padded positions get exactly 0."""
    features = q.shape[-1]
    real = jnp.promote_types(v.dtype, jnp.float32)  # FFTs need at least float32 (no bfloat16 FFT)
    fq, fk, fv = (jnp.fft.rfft(x.astype(real), axis=-1) for x in (q, k, v))      # (B, h, T, F) complex
    beta = jnp.sum(fk * fv, axis=-2, keepdims=True)                             # (B, h, 1, F) superposition
    # unbinding: the spectrum of vhat_t is beta * conj(Q_t); it is never formed or inverted, because
    # the cosine needs only <v, vhat> and |vhat|, and by Parseval <x, y> = (1/H') sum X conj(Y) over the
    # full spectrum (the 1/H' cancels in the cosine)
    weights = _parseval_weights(features, real)                                 # (F,)
    vq = fv * fq                                                                # V_t Q_t: Re(V conj(beta conj Q))
    dot = jnp.sum(weights * (vq.real * beta.real + vq.imag * beta.imag), axis=-1)               # (B, h, T)
    norm2_v = jnp.sum(weights * (fv.real ** 2 + fv.imag ** 2), axis=-1)                          # (B, h, T)
    norm2_vhat = jnp.sum(weights * (beta.real ** 2 + beta.imag ** 2) * (fq.real ** 2 + fq.imag ** 2), axis=-1)
    scores = (dot * jax.lax.rsqrt(norm2_v) * jax.lax.rsqrt(norm2_vhat)).astype(v.dtype)        # (B, h, T)
    if mask is not None:
        mask_value = max(MASK_VALUE, float(jnp.finfo(v.dtype).min))              # -1e9 overflows float16
        scores = scores + (1 - mask[:, None, :].astype(v.dtype)) * jnp.asarray(mask_value, v.dtype)
    attention = jax.nn.softmax(scores, axis=-1)                                 # (B, h, T) over time
    return attention[..., None] * v                                             # (B, h, T, H')


class SelfAttention(nn.Module):
    """Dense q, k, v -> heads -> HRR attention -> merged heads -> Dense output."""
    features: int
    heads: int
    use_bias: bool = False  # LRA tasks: no bias; EMBER: bias

    @nn.compact
    def __call__(self, x, mask=None):                                           # x (B, T, E)
        dense = partial(nn.Dense, self.features, use_bias=self.use_bias)
        q, k, v = (split_heads(dense(name=name)(x), self.heads) for name in ('query', 'key', 'value'))
        out = hrr_attention(q, k, v, mask)                                      # (B, h, T, H')
        return dense(name='output')(merge_heads(out))                           # (B, T, E)


ACTIVATIONS = {'gelu': nn.gelu, 'relu': nn.relu}


class MLP(nn.Module):
    """Dense(hidden) -> activation -> Dense(E, no bias) -> Dropout."""
    features: int
    hidden: int
    dropout_rate: float
    activation: str = 'gelu'

    @nn.compact
    def __call__(self, x, train):
        x = ACTIVATIONS[self.activation](nn.Dense(self.hidden)(x))
        x = nn.Dense(self.features, use_bias=False)(x)
        return nn.Dropout(self.dropout_rate, deterministic=not train)(x)


def layer_norm():
    return nn.LayerNorm(epsilon=1e-6)


class EncoderBlock(nn.Module):
    """One layer in the paper's style A, B, C or D (A and D differ only before the first layer)."""
    features: int
    heads: int
    mlp_hidden: int
    dropout_rate: float
    style: str = 'A'
    use_bias: bool = False
    activation: str = 'gelu'

    @nn.compact
    def __call__(self, x, mask, train):                                         # x (B, T, E)
        attend = SelfAttention(self.features, self.heads, self.use_bias)
        mlp = MLP(self.features, self.mlp_hidden, self.dropout_rate, self.activation)
        drop = nn.Dropout(self.dropout_rate, deterministic=not train)
        if self.style in ('A', 'D'):
            x = x + drop(attend(x, mask))
            return x + mlp(layer_norm()(x), train)
        if self.style == 'B':  # pre-LN
            x = x + drop(attend(layer_norm()(x), mask))
            return x + mlp(layer_norm()(x), train)
        if self.style == 'C':  # post-LN
            x = layer_norm()(x + drop(attend(x, mask)))
            return layer_norm()(x + mlp(x, train))
        raise ValueError(f"block style must be one of A, B, C, D, not {self.style!r}")


class Encoder(nn.Module):
    """ids (B, T) -> embedding -> Dropout (-> LayerNorm for style A) -> n_layer blocks -> (B, T, E)."""
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

    @nn.compact
    def __call__(self, ids, train):
        ids = ids.astype(jnp.int32)                                             # (B, T)
        mask = (ids > 0).astype(jnp.float32) if self.use_mask else None         # (B, T)
        x = Embedding(self.vocab_size, self.embed_size, self.max_seq_len, self.positions)(ids)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        if self.block == 'A':
            x = layer_norm()(x)
        for _ in range(self.n_layer):
            x = EncoderBlock(self.embed_size, self.heads, self.mlp_hidden, self.dropout_rate, self.block)(x, mask, train)
        return x                                                                # (B, T, E)


class ClassifierHead(nn.Module):
    """(B, D) features -> Dense(E) -> GELU -> Dense(classes) -> log-softmax."""
    embed_size: int
    num_classes: int

    @nn.compact
    def __call__(self, x):
        x = nn.gelu(nn.Dense(self.embed_size)(x))
        return nn.log_softmax(nn.Dense(self.num_classes)(x), axis=-1)


class Classifier(nn.Module):
    """One sequence: encoder -> mean over time (padding included, as the original) -> head."""
    encoder: Encoder
    num_classes: int

    @nn.compact
    def __call__(self, inputs, train=False):
        x = jnp.mean(self.encoder(inputs, train), axis=1)                       # (B, E)
        return ClassifierHead(self.encoder.embed_size, self.num_classes)(x)


class DualClassifier(nn.Module):
    """Two sequences through one shared encoder; the head reads [m1, m2, m1*m2, m1-m2] (retrieval)."""
    encoder: Encoder
    num_classes: int

    @nn.compact
    def __call__(self, inputs1, inputs2, train=False):
        m1 = jnp.mean(self.encoder(inputs1, train), axis=1)                     # (B, E)
        m2 = jnp.mean(self.encoder(inputs2, train), axis=1)                     # (B, E)
        x = jnp.concatenate([m1, m2, m1 * m2, m1 - m2], axis=-1)                # (B, 4E)
        return ClassifierHead(self.encoder.embed_size, self.num_classes)(x)


def build_model(config):
    """The network a task's configuration asks for (see trainer.Config for the fields)."""
    encoder = Encoder(vocab_size=config.vocab_size, max_seq_len=config.max_seq_len,
                      embed_size=config.embed_size, heads=config.heads, n_layer=config.n_layer,
                      mlp_hidden=int(config.embed_size * config.mlp_ratio), dropout_rate=config.dropout_rate,
                      block=config.block, positions=config.positions, use_mask=config.use_mask)
    head = {'single': Classifier, 'dual': DualClassifier}[config.head]
    return head(encoder=encoder, num_classes=config.num_classes)
