"""One EMBER training step at a long length: its time and memory, beside what softmax attention needs.

    python benchmarks/ember_memory.py [--power=17] [--repeats=3] [--dtype=float32] [--softmax_impl=auto]

Runs the paper's EMBER model (1 layer, embed 256, 8 heads) for one batch-1 training step at
T = 2^power on one device: the step's median time, the compiled step's temporary memory, and the
process's peak memory. Softmax attention at the same length is only compiled, never run: the
compiled memory analysis of its forward and backward pass (the attention core alone, (1, T+1, 8, 32),
in the same dtype and implementation as the model would use) says what it would need.
"""
import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import trainer  # noqa: E402
import utils  # noqa: E402
from ember.hrrformer_mgpu import complete, config as ember_config  # noqa: E402
from hrrformer import build_model, cudnn_refusal, softmax_attention, wants_cudnn  # noqa: E402

GB = 2 ** 30


def softmax_attention_bytes(length, heads, head_size, dtype, impl):
    """Temporary memory of softmax attention's forward+backward at this length, from compilation only."""
    shape = jax.ShapeDtypeStruct((1, heads, length, head_size), jnp.dtype(dtype))
    mask = jax.ShapeDtypeStruct((1, length), jnp.float32)

    def loss(q, k, v, mask):
        return jnp.sum(softmax_attention(q, k, v, mask, impl=impl).astype(jnp.float32) ** 2)
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(shape, shape, shape, mask).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def parse(argv):
    parser = utils.OneLineParser(prog='ember_memory.py', description=__doc__.split('\n\n')[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--power', metavar='INT', type=utils.integer_at_least(1), default=17,
                        help='sequence length T = 2^power bytes')
    parser.add_argument('--repeats', metavar='INT', type=utils.integer_at_least(1), default=3,
                        help='timed steps after one warm-up (the median is reported)')
    parser.add_argument('--dtype', choices=('float32', 'bfloat16'), default='float32',
                        help='computing dtype of the Dense layers and embeddings (parameters stay float32)')
    parser.add_argument('--softmax_impl', choices=('auto', 'xla', 'cudnn'), default='auto',
                        help="softmax attention's implementation (auto: cuDNN on a GPU in bfloat16)")
    return parser.parse_args(argv)


def main(argv):
    options = parse(argv)
    power, repeats, length = options.power, options.repeats, 2 ** options.power
    config = dataclasses.replace(complete(dataclasses.replace(ember_config, max_seq_len=length)), batch_size=1,
                                 dtype=options.dtype, softmax_impl=options.softmax_impl)
    device = jax.local_devices()[:1]
    batch = {'inputs': np.random.default_rng(0).integers(1, 257, size=(1, length)).astype(np.uint16),
             'targets': np.array([1])}
    model = build_model(config)
    state, _ = trainer.init_state(config, model, batch, steps_per_decay=1)
    p_train, _ = trainer.compile_steps(config, model.apply, device)
    state = trainer.replicate(state, device)
    sharded = trainer.shard(batch, 1)
    key = jax.random.PRNGKey(0)
    compiled = p_train.lower(state, sharded, key).compile()
    analysis = compiled.memory_analysis()
    state, metrics = p_train(state, sharded, key)  # warm-up
    jax.block_until_ready(metrics)
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        state, metrics = p_train(state, sharded, key)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - tic)
    peak = trainer.peak_memory_mb(device[0]) / 1024
    softmax = softmax_attention_bytes(length + 1, config.heads, config.embed_size // config.heads, options.dtype,
                                      options.softmax_impl) / GB
    temp = getattr(analysis, 'temp_size_in_bytes', 0) / GB if analysis is not None else float('nan')
    print(f'jax {jax.__version__} on {device[0].device_kind}; EMBER model, batch 1, T = 2^{power} = {length}, '
          f'{options.dtype}')
    print(f'Hrrformer training step: {np.median(times):.2f} s (median of {repeats}), compiled temporary memory '
          f'{temp:.2f} GB, peak {"device" if device[0].platform != "cpu" else "process"} memory {peak:.2f} GB')
    shape = (1, length + 1, config.heads, config.embed_size // config.heads)
    cudnn = wants_cudnn(options.softmax_impl, options.dtype) and cudnn_refusal(shape, options.dtype, True) is None
    print(f'softmax attention alone ({"cuDNN" if cudnn else "XLA"}), forward+backward at the same length: would need '
          f'{softmax:.1f} GB (compiled memory analysis, not run)')


if __name__ == '__main__':
    main(sys.argv[1:])
