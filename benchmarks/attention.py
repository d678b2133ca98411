"""Forward+backward time and compiled memory of `hrr_attention` against the original formulation.

The original computes the same math with complex fft/ifft pairs and an explicit roll(flip(q)) inverse:
five complex transforms forward and a cosine in the time domain. Both run interleaved in one
process, so machine noise hits them alike; the ratio is what to read.

    python benchmarks/attention.py [--repeats=N]
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from hrrformer import hrr_attention  # noqa: E402

SHAPES = {  # (B, h, T, H') at each task's configuration
    'ListOps': (4, 8, 2000, 64),
    'Text': (8, 4, 4000, 32),
    'Image': (8, 4, 1024, 64),
    'EMBER': (1, 8, 16384, 32),
}


def original_attention(q, k, v, mask=None):
    """The paper's math as the original code writes it (complex FFTs, time-domain inverse and cosine)."""
    def bind(x, y):
        return jnp.real(jnp.fft.ifft(jnp.fft.fft(x, axis=-1) * jnp.fft.fft(y, axis=-1), axis=-1))
    beta = jnp.sum(bind(k, v), axis=-2, keepdims=True)                       # (B, h, 1, H')
    vhat = bind(beta, jnp.roll(jnp.flip(q, axis=-1), 1, axis=-1))             # (B, h, T, H')
    score = jnp.sum(v * vhat, -1, keepdims=True) / (
        jnp.linalg.norm(v, axis=-1, keepdims=True) * jnp.linalg.norm(vhat, axis=-1, keepdims=True))
    if mask is not None:
        score = score + (1. - mask[:, None, :, None]) * (-1e9)
    return jax.nn.softmax(score, axis=-2) * v


def forward_backward(attention):
    """jit(grad) of a scalar function of the attention output with respect to q, k and v."""
    def loss(q, k, v, mask):
        return jnp.sum(attention(q, k, v, mask) ** 2)
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))


def temp_bytes(compiled):
    analysis = compiled.memory_analysis()
    return getattr(analysis, 'temp_size_in_bytes', float('nan')) if analysis is not None else float('nan')


def measure(shape, repeats):
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    q, k, v = (jax.random.normal(key, shape, jnp.float32) for key in keys)
    mask = jnp.ones(shape[:1] + shape[2:3], jnp.float32).at[:, shape[2] * 3 // 4:].set(0)  # a padded tail
    fns = {name: forward_backward(fn) for name, fn in (('hrr', hrr_attention), ('original', original_attention))}
    compiled = {name: fn.lower(q, k, v, mask).compile() for name, fn in fns.items()}
    times = {name: [] for name in fns}
    for name, fn in compiled.items():  # warm-up
        jax.block_until_ready(fn(q, k, v, mask))
    for _ in range(repeats):  # interleaved, so both see the same machine state
        for name, fn in compiled.items():
            tic = time.perf_counter()
            jax.block_until_ready(fn(q, k, v, mask))
            times[name].append(time.perf_counter() - tic)
    median = {name: float(np.median(t)) for name, t in times.items()}
    memory = {name: temp_bytes(fn) for name, fn in compiled.items()}
    return median, memory


def main(argv):
    repeats = 7
    for arg in argv:
        if arg.startswith('--repeats='):
            repeats = int(arg.split('=', 1)[1])
        else:
            raise SystemExit(f'error: unknown argument {arg!r}; usage: python benchmarks/attention.py [--repeats=N]')
    print(f'jax {jax.__version__} on {jax.devices()[0].device_kind}; forward+backward, median of {repeats}')
    print(f"{'task':8} {'(B, h, T, H)':>22} {'hrr ms':>9} {'orig ms':>9} {'speed-up':>9} "
          f"{'hrr temp MB':>12} {'orig temp MB':>13}")
    for task, shape in SHAPES.items():
        median, memory = measure(shape, repeats)
        print(f"{task:8} {str(shape):>22} {median['hrr'] * 1e3:9.1f} {median['original'] * 1e3:9.1f} "
              f"{median['original'] / median['hrr']:8.2f}x {memory['hrr'] / 2**20:12.1f} "
              f"{memory['original'] / 2**20:13.1f}")


if __name__ == '__main__':
    main(sys.argv[1:])
