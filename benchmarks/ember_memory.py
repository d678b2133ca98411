"""One EMBER training step at a long length: its time and memory, beside what softmax attention needs.

    python benchmarks/ember_memory.py [--power=17] [--repeats=3]

Runs the paper's EMBER model (1 layer, embed 256, 8 heads) for one batch-1 training step at
T = 2^power on one device: the step's median time, the compiled step's temporary memory, and the
process's peak memory. Softmax attention at the same length is only compiled, never run: the
compiled memory analysis of its forward and backward pass (the attention core alone, (1, T+1, 8, 32))
says what it would need.
"""
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import trainer  # noqa: E402
from ember.hrrformer_mgpu import complete, config as ember_config  # noqa: E402
from hrrformer import build_model  # noqa: E402

GB = 2 ** 30


def softmax_attention_bytes(length, heads, head_size):
    """Temporary memory of softmax attention's forward+backward at this length, from compilation only."""
    shape = jax.ShapeDtypeStruct((1, length, heads, head_size), jnp.float32)

    def loss(q, k, v):
        return jnp.sum(jax.nn.dot_product_attention(q, k, v) ** 2)
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(shape, shape, shape).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def main(argv):
    power, repeats = 17, 3
    for arg in argv:
        name, _, value = arg.partition('=')
        if name == '--power':
            power = int(value)
        elif name == '--repeats':
            repeats = int(value)
        else:
            raise SystemExit(f'error: unknown argument {arg!r}; usage: python benchmarks/ember_memory.py '
                             f'[--power=17] [--repeats=3]')
    length = 2 ** power
    config = dataclasses.replace(complete(dataclasses.replace(ember_config, max_seq_len=length)), batch_size=1)
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
    softmax = softmax_attention_bytes(length + 1, config.heads, config.embed_size // config.heads) / GB
    temp = getattr(analysis, 'temp_size_in_bytes', 0) / GB if analysis is not None else float('nan')
    print(f'jax {jax.__version__} on {device[0].device_kind}; EMBER model, batch 1, T = 2^{power} = {length}')
    print(f'Hrrformer training step: {np.median(times):.2f} s (median of {repeats}), compiled temporary memory '
          f'{temp:.2f} GB, peak {"device" if device[0].platform != "cpu" else "process"} memory {peak:.2f} GB')
    print(f'softmax attention alone, forward+backward at the same length: would need {softmax:.1f} GB '
          f'(compiled memory analysis, not run)')


if __name__ == '__main__':
    main(sys.argv[1:])
