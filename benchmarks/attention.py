"""Forward+backward time and compiled memory of `hrr_attention` against the original formulation.

The original computes the same math with complex fft/ifft pairs and an explicit roll(flip(q)) inverse:
five complex transforms forward and a cosine in the time domain. Both run interleaved in one
process, so machine noise hits them alike; the ratio is what to read. With --softmax: the softmax
baseline's attention in bfloat16, XLA's implementation against cuDNN's fused kernel (on a GPU), with
the largest differences of their outputs and gradients.

    python benchmarks/attention.py [--repeats=N] [--softmax]
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import utils  # noqa: E402
from hrrformer import cudnn_refusal, hrr_attention, softmax_attention  # noqa: E402

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


def measure(shape, repeats, attentions, dtype=jnp.float32):
    """Median seconds, compiled temporary memory and outputs (value, gradients) of each attention in
    `attentions` (name -> function), at one (B, h, T, H') shape, run interleaved."""
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    q, k, v = (jax.random.normal(key, shape, jnp.float32).astype(dtype) for key in keys)
    mask = jnp.ones(shape[:1] + shape[2:3], jnp.float32).at[:, shape[2] * 3 // 4:].set(0)  # a padded tail
    fns = {name: forward_backward(fn) for name, fn in attentions.items()}
    compiled = {name: fn.lower(q, k, v, mask).compile() for name, fn in fns.items()}
    times = {name: [] for name in fns}
    outputs = {name: jax.block_until_ready(fn(q, k, v, mask)) for name, fn in compiled.items()}  # warm-up
    for _ in range(repeats):  # interleaved, so both see the same machine state
        for name, fn in compiled.items():
            tic = time.perf_counter()
            jax.block_until_ready(fn(q, k, v, mask))
            times[name].append(time.perf_counter() - tic)
    median = {name: float(np.median(t)) for name, t in times.items()}
    memory = {name: temp_bytes(fn) for name, fn in compiled.items()}
    return median, memory, outputs


def relative_difference(a, b):
    """The largest difference between two results (value, gradients) relative to the largest value of each."""
    return max(float(jnp.max(jnp.abs(x.astype(jnp.float32) - y.astype(jnp.float32))) /
                     jnp.maximum(jnp.max(jnp.abs(x.astype(jnp.float32))), 1e-30))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def compare_softmax(repeats):
    """Softmax attention in bfloat16, forward+backward: XLA against cuDNN where cuDNN takes the shape."""
    platform = jax.devices()[0].platform
    if platform != 'gpu':
        print(f'cuDNN not available on {platform}: nothing to compare')
        return
    print(f"{'task':8} {'(B, h, T, H)':>22} {'xla ms':>9} {'cudnn ms':>9} {'speed-up':>9} {'xla temp MB':>12} "
          f"{'cudnn temp MB':>14} {'rel. diff':>10}")
    for task, shape in SHAPES.items():
        b, h, t, e = shape
        refused = cudnn_refusal((b, t, h, e), 'bfloat16', True)
        attentions = {'xla': lambda q, k, v, m: softmax_attention(q, k, v, m, impl='xla')}
        if refused is None:
            attentions['cudnn'] = lambda q, k, v, m: softmax_attention(q, k, v, m, impl='cudnn')
        median, memory, outputs = measure(shape, repeats, attentions, jnp.bfloat16)
        line = f"{task:8} {str(shape):>22} {median['xla'] * 1e3:9.1f}"
        if refused is None:
            line += (f" {median['cudnn'] * 1e3:9.1f} {median['xla'] / median['cudnn']:8.2f}x "
                     f"{memory['xla'] / 2**20:12.1f} {memory['cudnn'] / 2**20:14.1f} "
                     f"{relative_difference(outputs['xla'], outputs['cudnn']):10.2g}")
        else:
            line += f"  (cuDNN refused: {refused})"
        print(line, flush=True)


def main(argv):
    parser = utils.OneLineParser(prog='attention.py', description=__doc__.split('\n\n')[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--repeats', metavar='INT', type=utils.integer_at_least(1), default=7,
                        help='timed runs of each function after one warm-up (the median is reported)')
    parser.add_argument('--softmax', action='store_true', help='compare the softmax baseline\'s attention in '
                        'bfloat16, XLA against cuDNN, instead of hrr_attention against the original')
    options = parser.parse_args(argv)
    repeats = options.repeats
    print(f'jax {jax.__version__} on {jax.devices()[0].device_kind}; forward+backward, median of {repeats}')
    if options.softmax:
        return compare_softmax(repeats)
    print(f"{'task':8} {'(B, h, T, H)':>22} {'hrr ms':>9} {'orig ms':>9} {'speed-up':>9} "
          f"{'hrr temp MB':>12} {'orig temp MB':>13}")
    for task, shape in SHAPES.items():
        median, memory, _ = measure(shape, repeats, {'hrr': hrr_attention, 'original': original_attention})
        print(f"{task:8} {str(shape):>22} {median['hrr'] * 1e3:9.1f} {median['original'] * 1e3:9.1f} "
              f"{median['original'] / median['hrr']:8.2f}x {memory['hrr'] / 2**20:12.1f} "
              f"{memory['original'] / 2**20:13.1f}")


if __name__ == '__main__':
    main(sys.argv[1:])
