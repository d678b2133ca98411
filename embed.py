"""Token embedding plus positions: learned (an Embed over positions 0..T-1) or the fixed sinusoid table."""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np


def sinusoid_table(max_seq_len, features):
    """(max_seq_len, features) float32: sin on even features, cos on odd ones, base 10000."""
    position = np.arange(max_seq_len)[:, None]                                          # (T, 1)
    frequency = np.exp(np.arange(0, features, 2) * -(np.log(10000.0) / features))       # (ceil(E/2),)
    table = np.zeros((max_seq_len, features), dtype=np.float32)
    table[:, 0::2] = np.sin(position * frequency)
    table[:, 1::2] = np.cos(position * frequency[: features // 2])
    return table


class Embedding(nn.Module):
    """ids (B, T) -> token embedding + position embedding (B, T, E) in `dtype` (the tables stay float32)."""
    vocab_size: int
    embed_size: int
    max_seq_len: int
    positions: str = 'learned'  # 'learned' | 'fixed' (sinusoid, not trained)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, ids):
        length = ids.shape[-1]
        if length > self.max_seq_len:
            raise ValueError(f'sequence of {length} tokens is longer than max_seq_len={self.max_seq_len}')
        x = nn.Embed(self.vocab_size, self.embed_size, dtype=self.dtype, name='token')(ids)   # (B, T, E)
        if self.positions == 'learned':
            pos = nn.Embed(self.max_seq_len, self.embed_size, dtype=self.dtype, name='position')(
                jnp.arange(length))
        elif self.positions == 'fixed':
            pos = jnp.asarray(sinusoid_table(self.max_seq_len, self.embed_size)[:length])
        else:
            raise ValueError(f"positions must be 'learned' or 'fixed', not {self.positions!r}")
        return x + pos.astype(x.dtype)                                                     # (B, T, E)
