"""The one training loop every task shares: jax.pmap data parallelism over all local devices.

Sections, top to bottom: configuration, input, model and optimiser, steps, checkpoint, evaluation, loop.
A task script builds a `Config` with its paper values and calls `run(config, load_dataset)`.
"""
import dataclasses
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization
from flax.training import train_state
from tqdm import tqdm

import utils
from hrrformer import build_model
from utils import UserError


# ============================================================================ configuration

@dataclasses.dataclass(frozen=True)
class Config:
    task: str = 'listops'             # names the default workdir, weights/<task>_<n_layer>
    # data
    data_dir: Optional[str] = None    # None: the task's default location (see its dataset.py)
    vocab_size: int = 17              # token ids 0..vocab_size-1, 0 = padding
    num_classes: int = 10
    max_seq_len: int = 2000           # tokens per sequence (truncated or padded to this)
    train_examples: Optional[int] = None  # use only the first N training examples (None: all)
    eval_examples: Optional[int] = None   # use only the first N validation and test examples (None: all)
    # model
    n_layer: int = 6
    embed_size: int = 512
    heads: int = 8
    mlp_ratio: float = 0.5            # MLP hidden width = mlp_ratio * embed_size
    block: str = 'A'                  # encoder block style A, B, C or D (paper.md)
    positions: str = 'learned'        # 'learned' or 'fixed' (sinusoid)
    use_mask: bool = True             # mask padding (id 0) in the attention softmax
    head: str = 'single'              # 'single' sequence or 'dual' (two towers, retrieval)
    use_bias: bool = False            # biases on q, k, v, output and the MLP's second Dense (EMBER)
    activation: str = 'gelu'          # of the MLP and the head: 'gelu' or 'relu' (EMBER)
    cls_token: bool = False           # a learned CLS token in front, whose output the head reads (EMBER);
                                      # otherwise the head reads the mean over time
    attention: str = 'hrr'            # 'hrr', or 'softmax' for the Transformer baseline (same blocks)
    dtype: str = 'float32'            # of the Dense layers and embeddings: 'float32' (paper) or 'bfloat16'
    softmax_impl: str = 'auto'        # softmax attention: 'xla', 'cudnn', or 'auto' (cuDNN on a GPU in bfloat16)
    dropout_rate: float = 0.1
    # optimisation
    batch_size: int = 2               # per device; the global batch is this times the device count
    epochs: int = 20
    lr: float = 1e-3                  # initial learning rate
    lr_decay: float = 0.9             # multiplied in smoothly over each epoch
    end_lr: float = 1e-5              # the learning rate never decays below this
    optimizer: str = 'adam'           # 'adam' or 'adamw'
    weight_decay: float = 0.0         # AdamW only
    loss: str = 'cross_entropy'       # or 'binary_cross_entropy' on the class probabilities (EMBER)
    label_smoothing: float = 0.1
    seed: int = 0                     # parameters, dropout and the order of training examples
    # run
    workdir: Optional[str] = None     # None: weights/<task>_<n_layer> under the repository root
    eval_only: bool = False           # evaluate the latest checkpoint and stop
    max_minutes: Optional[float] = None  # stop after the last whole epoch that fits in this many minutes (None: no limit)
    # several processes (hosts): jax.distributed; under SLURM and similar schedulers JAX finds these itself
    coordinator_address: Optional[str] = None  # host:port of process 0
    num_processes: Optional[int] = None
    process_id: Optional[int] = None


# A checkpoint can be resumed only by a run with the same values of these fields.
MODEL_FIELDS = ('task', 'vocab_size', 'num_classes', 'max_seq_len', 'n_layer', 'embed_size', 'heads',
                'mlp_ratio', 'block', 'positions', 'use_mask', 'head', 'use_bias', 'activation', 'cls_token',
                'attention', 'optimizer')


def check_config(config):
    """Stop with one line on settings that cannot work."""
    positive = ('vocab_size', 'num_classes', 'max_seq_len', 'n_layer', 'embed_size', 'heads', 'batch_size', 'epochs')
    for name in positive:
        if getattr(config, name) < 1:
            raise UserError(f'--{name} must be at least 1, not {getattr(config, name)}')
    if config.embed_size % config.heads:
        raise UserError(f'--embed_size={config.embed_size} must be divisible by --heads={config.heads}')
    choices = {'block': 'ABCD', 'positions': ('learned', 'fixed'), 'head': ('single', 'dual'),
               'optimizer': ('adam', 'adamw'), 'activation': ('gelu', 'relu'), 'attention': ('hrr', 'softmax'),
               'dtype': ('float32', 'bfloat16'), 'softmax_impl': ('auto', 'xla', 'cudnn'),
               'loss': ('cross_entropy', 'binary_cross_entropy')}
    for name, allowed in choices.items():
        if getattr(config, name) not in allowed:
            raise UserError(f'--{name} must be one of {", ".join(allowed)}, not {getattr(config, name)!r}')
    for name in ('train_examples', 'eval_examples'):
        if getattr(config, name) is not None and getattr(config, name) < 1:
            raise UserError(f'--{name} must be at least 1 (or none for all), not {getattr(config, name)}')
    if not 0 <= config.dropout_rate < 1:
        raise UserError(f'--dropout_rate must be in [0, 1), not {config.dropout_rate}')


def workdir_of(config):
    if config.workdir is not None:
        return Path(config.workdir).expanduser().resolve()
    return utils.ROOT / 'weights' / f'{config.task}_{config.n_layer}'


# ============================================================================ input
# A split is a dict of numpy arrays with one leading example axis ('targets' (N,) and the model's
# inputs: 'inputs', or 'inputs1' and 'inputs2'), or any object with len() and
# batches(index_batches) -> one such dict per array of example indices (EMBER streams its files so).

class ArraySplit:
    """An in-memory split: a batch is numpy indexing."""

    def __init__(self, arrays):
        self.arrays = arrays

    def __len__(self):
        return len(self.arrays['targets'])

    def batches(self, index_batches):
        for index in index_batches:
            yield {key: value[index] for key, value in self.arrays.items()}


def as_split(split):
    return ArraySplit(split) if isinstance(split, dict) else split


def used(split, limit):
    """How many examples of a split a run uses: the first `limit` (None: all)."""
    return len(split) if limit is None else min(len(split), limit)


def train_order(n, seed, epoch):
    """The order of training examples: a function of the seed and the epoch only (not of the devices)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def train_batches(split, global_batch, order, share=slice(None)):
    """Full batches in `order` (the last partial batch is dropped); of each, this process's `share`."""
    starts = range(0, len(order) - global_batch + 1, global_batch)
    return as_split(split).batches([np.sort(order[s:s + global_batch])[share] for s in starts])  # sorted: faster reads


def eval_batches(split, global_batch, n=None, share=slice(None)):
    """The first n examples (None: all) exactly once, in global batches padded with zero rows of weight 0;
    of each, this process's `share`."""
    split = as_split(split)
    n = len(split) if n is None else n
    positions = [np.arange(s, s + global_batch)[share] for s in range(0, n, global_batch)]
    for place, batch in zip(positions, split.batches([p[p < n] for p in positions])):
        real, size = len(batch['targets']), len(place)
        batch = {key: np.concatenate([value, np.zeros((size - real,) + value.shape[1:], value.dtype)])
                 for key, value in batch.items()}
        batch['weights'] = (np.arange(size) < real).astype(np.float32)
        yield batch


def shard(batch, n_devices):
    """(G, ...) -> (n_devices, G / n_devices, ...) for pmap."""
    return {key: value.reshape((n_devices, -1) + value.shape[1:]) for key, value in batch.items()}


# ============================================================================ model and optimiser

def make_optimizer(config, steps_per_epoch):
    """Adam or AdamW with a smooth exponential decay of `lr_decay` per epoch, floored at `end_lr`."""
    schedule = optax.exponential_decay(init_value=config.lr, transition_steps=max(steps_per_epoch, 1),
                                       decay_rate=config.lr_decay, transition_begin=1, end_value=config.end_lr)
    if config.optimizer == 'adamw':
        return optax.adamw(schedule, weight_decay=config.weight_decay), schedule
    return optax.adam(schedule), schedule


def init_state(config, model, example_batch, steps_per_epoch):
    """A fresh TrainState; the parameters depend only on the seed."""
    inputs = {key: jnp.asarray(value[:1]) for key, value in example_batch.items() if key != 'targets'}
    params = jax.jit(partial(model.init, train=False))(jax.random.PRNGKey(config.seed), **inputs)['params']
    tx, schedule = make_optimizer(config, steps_per_epoch)
    return train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx), schedule


def count_params(params):
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params))


# ============================================================================ steps

def per_example_loss(log_probs, targets, num_classes, smoothing, kind='cross_entropy'):
    """(B, C) log-probabilities, (B,) targets -> (B,) losses: label-smoothed cross-entropy (LRA), or the
    EMBER model's binary cross-entropy summed over the classes, with the original's clipping to 1e-10."""
    labels = optax.smooth_labels(jax.nn.one_hot(targets, num_classes, dtype=log_probs.dtype), smoothing)
    if kind == 'binary_cross_entropy':
        eps, probs = 1e-10, jnp.exp(log_probs)
        clip = partial(jnp.clip, min=eps, max=1.)
        return jnp.sum(-clip(labels) * jnp.log(clip(probs)) - clip(1. - labels) * jnp.log(clip(1. - probs)), -1)
    return -jnp.sum(labels * log_probs, axis=-1)


def model_inputs(batch):
    return {key: value for key, value in batch.items() if key not in ('targets', 'weights')}


def train_step(state, batch, key, *, num_classes, smoothing, loss):
    """One step on this device's share of the global batch; gradients averaged over devices.
    An example whose loss is NaN counts 0 and NaN gradients are set to 0 (as the original); a batch
    whose loss is NaN on any device is skipped (no update) and counted. Metrics are psummed sums."""
    key = jax.random.fold_in(key, jax.lax.axis_index('batch'))  # a different dropout mask per device

    def loss_fn(params):
        log_probs = state.apply_fn({'params': params}, **model_inputs(batch), train=True, rngs={'dropout': key})
        losses = per_example_loss(log_probs, batch['targets'], num_classes, smoothing, loss)     # (b,)
        finite = jnp.isfinite(losses)
        losses = jnp.where(finite, losses, 0.)
        return jnp.mean(losses), (log_probs, losses, jnp.all(finite))

    (_, (log_probs, losses, finite)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = jax.lax.pmean(jax.tree.map(jnp.nan_to_num, grads), 'batch')
    skip = jax.lax.psum(1 - finite.astype(jnp.int32), 'batch') > 0
    updated = state.apply_gradients(grads=grads)
    state = jax.tree.map(lambda new, old: jnp.where(skip, old, new), updated, state)
    keep = 1. - skip.astype(jnp.float32)
    correct = jnp.sum(jnp.argmax(log_probs, -1) == batch['targets'])
    metrics = {'loss': jnp.sum(losses) * keep, 'correct': correct * keep,
               'count': losses.shape[0] * keep, 'skipped': skip.astype(jnp.float32) / jax.lax.psum(1, 'batch')}
    return state, jax.lax.psum(metrics, 'batch')


def eval_step(params, batch, *, apply_fn):
    """Correct predictions among the real (weight 1) rows, summed over devices."""
    log_probs = apply_fn({'params': params}, **model_inputs(batch), train=False)
    correct = jnp.sum((jnp.argmax(log_probs, -1) == batch['targets']) * batch['weights'])
    return jax.lax.psum({'correct': correct, 'count': jnp.sum(batch['weights'])}, 'batch')


def compile_steps(config, apply_fn, devices):
    """The pmapped steps, built once per run (never inside the loop)."""
    donate = (0,) if devices[0].platform != 'cpu' else ()  # CPU cannot donate buffers
    # with several processes pmap must see every process's devices (its default), or its collectives
    # would stay inside this process; alone, a run may choose its devices (the tests compare 1 and 4)
    devices = devices if jax.process_count() == 1 else None
    p_train = jax.pmap(partial(train_step, num_classes=config.num_classes, smoothing=config.label_smoothing,
                               loss=config.loss),
                       axis_name='batch', in_axes=(0, 0, None), donate_argnums=donate, devices=devices)
    p_eval = jax.pmap(partial(eval_step, apply_fn=apply_fn), axis_name='batch', devices=devices)
    return p_train, p_eval


def replicate(tree, devices):
    """A copy of every leaf on each device, stacked along a new leading axis: pmap's layout."""
    sharding = jax.sharding.NamedSharding(jax.sharding.Mesh(np.array(devices), ('batch',)),
                                          jax.sharding.PartitionSpec('batch'))

    def put(x):
        x = jnp.asarray(x)[None]
        shards = [jax.device_put(x, device) for device in devices]
        return jax.make_array_from_single_device_arrays((len(devices),) + x.shape[1:], sharding, shards)
    return jax.tree.map(put, tree)


def unreplicate(tree):
    return jax.tree.map(lambda x: x[0], tree)


# ============================================================================ checkpoint

def state_to_tree(state, dropout_key):
    return {'step': state.step, 'params': state.params,
            'opt_state': serialization.to_state_dict(state.opt_state), 'dropout_key': dropout_key}


def tree_to_state(state, tree):
    return state.replace(step=tree['step'], params=tree['params'],
                         opt_state=serialization.from_state_dict(state.opt_state, tree['opt_state']))


def check_compatible(saved, config, directory):
    """Refuse a checkpoint written by a different model configuration."""
    defaults = Config()  # a field newer than the checkpoint had its default then
    diffs = [f'{name}={saved.get(name, getattr(defaults, name))!r} there, {getattr(config, name)!r} here'
             for name in MODEL_FIELDS if saved.get(name, getattr(defaults, name)) != getattr(config, name)]
    if diffs:
        raise UserError(f'the checkpoint in {directory} was written by a different model configuration '
                        f'({"; ".join(diffs)}): use the same settings, or another --workdir')


def _readable(directory, read, what):
    """read(step) for the newest checkpoint step where it works; a damaged checkpoint (a crash, a disk
    fault) is reported and the one before it is tried. None when there are no checkpoints."""
    steps = utils.checkpoint_steps(directory)
    for step in steps:
        try:
            return read(step)
        except Exception as error:  # noqa: BLE001 - any damage to the files means: try the previous one
            print(f'warning: the {what} of the epoch {step} checkpoint in {directory} cannot be read '
                  f'({type(error).__name__}: {str(error)[:200]}); trying the one before it', file=sys.stderr)
    if steps:
        raise UserError(f'no checkpoint in {directory} can be read; delete that folder to start again')
    return None


def latest_meta(directory):
    """The epoch and configuration of the newest readable checkpoint, or None."""
    return _readable(directory, lambda step: utils.restore_meta(directory, step), 'metadata')


def restore_latest(directory, like):
    """(tree, meta) of the newest readable checkpoint, or None."""
    return _readable(directory, lambda step: utils.restore_checkpoint(directory, step, like), 'state')


# ============================================================================ evaluation

def evaluate(p_eval, params, split, global_batch, n_devices, n=None, share=slice(None)):
    """Accuracy in % over the first n (None: all) examples of `split`, each exactly once, and their number
    (summed over the devices of every process)."""
    totals = {'correct': 0., 'count': 0.}
    for batch in eval_batches(split, global_batch, n, share):
        metrics = unreplicate(p_eval(params, shard(batch, n_devices)))
        totals = {key: totals[key] + float(metrics[key]) for key in totals}
    return 100. * totals['correct'] / max(totals['count'], 1), int(totals['count'])


def peak_memory_mb(device):
    """The accelerator's peak memory in use so far, or on CPU the process's peak resident memory."""
    stats = device.memory_stats() if device.platform != 'cpu' else None
    if stats and 'peak_bytes_in_use' in stats:
        return stats['peak_bytes_in_use'] / 2 ** 20
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 10  # kB on Linux


def start_processes(config):
    """Join the processes of a multi-process run into one set of devices (jax.distributed), from the
    settings or from what JAX detects under a cluster scheduler. A single process needs nothing."""
    explicit = config.coordinator_address is not None or config.num_processes is not None
    scheduled = int(os.environ.get('SLURM_NTASKS', '1')) > 1 or 'OMPI_COMM_WORLD_SIZE' in os.environ
    if not (explicit or scheduled) or jax.distributed.is_initialized():
        return
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')  # CPU devices of several processes
    jax.distributed.initialize(coordinator_address=config.coordinator_address,
                               num_processes=config.num_processes, process_id=config.process_id)


# ============================================================================ loop

def run(config, load_dataset: Callable, devices=None):
    """Train (or with eval_only, evaluate) `config` on the splits `load_dataset(config)` returns.
    Resumes from the newest checkpoint in the workdir. Returns the history rows (dicts)."""
    # 1. settings, devices and the workdir; a finished run stops here, before any data is loaded
    check_config(config)
    start_processes(config)
    devices = list(devices or jax.local_devices())
    n_devices, process, processes = len(devices), jax.process_index(), jax.process_count()
    global_batch = config.batch_size * n_devices * processes   # every device of every process
    per_process = config.batch_size * n_devices
    share = slice(process * per_process, (process + 1) * per_process)  # this process's rows of a global batch
    main_process = process == 0
    say = print if main_process else (lambda *args, **kwargs: None)  # logs and files: process 0 only
    workdir = workdir_of(config)
    checkpoints, history_file = workdir / 'checkpoints', workdir / 'history.csv'
    saved = latest_meta(checkpoints)
    if saved is not None:
        check_compatible(saved['config'], config, checkpoints)
        if saved['epoch'] >= config.epochs and not config.eval_only:
            say(f'{workdir}: finished, all {config.epochs} epochs done (history in {history_file}); '
                  f'raise --epochs to train further, or --eval_only=true to evaluate')
            return utils.read_history(history_file)
    elif config.eval_only:
        raise UserError(f'no checkpoint in {checkpoints} to evaluate: train first, or point --workdir at a run')

    # 2. data
    train, valid, test = (as_split(split) for split in load_dataset(config))
    n_train, n_valid, n_test = used(train, config.train_examples), used(valid, config.eval_examples), \
        used(test, config.eval_examples)
    steps_per_epoch = n_train // global_batch
    if steps_per_epoch == 0 and not config.eval_only:
        raise UserError(f'{n_train} training examples do not fill one global batch of {global_batch} '
                        f'(--batch_size={config.batch_size} x {n_devices} devices): use more examples or a smaller batch')
    say(f'{config.task}: {n_train} train / {n_valid} valid / {n_test} test examples; '
        f'{n_devices * processes} {devices[0].platform} device(s){f" in {processes} processes" if processes > 1 else ""}'
        f' x batch {config.batch_size} = {global_batch} per step, {steps_per_epoch} steps per epoch')

    # 3. model, optimiser and a fresh state
    model = build_model(config)
    state, schedule = init_state(config, model, next(train.batches([np.arange(1)])), steps_per_epoch)
    dropout_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 1)
    say(f'model: {count_params(state.params):,} parameters, {config.n_layer} layer(s), block {config.block}; '
          f'workdir {workdir}')

    # 4. resume: the newest readable checkpoint replaces the fresh state; history rows of epochs
    #    that have no checkpoint (written just before a crash) are dropped
    start_epoch = 1
    restored = restore_latest(checkpoints, state_to_tree(state, dropout_key)) if saved is not None else None
    if restored is not None:
        tree, meta = restored
        state, dropout_key = tree_to_state(state, tree), tree['dropout_key']
        start_epoch = meta['epoch'] + 1
        if not config.eval_only:
            say(f'resumed from epoch {meta["epoch"]}')
    if not config.eval_only and main_process:
        utils.truncate_history(history_file, start_epoch - 1)

    p_train, p_eval = compile_steps(config, model.apply, devices)
    state = replicate(state, devices)

    if config.eval_only:
        valid_acc, n_valid = evaluate(p_eval, state.params, valid, global_batch, n_devices, n_valid, share)
        test_acc, n_test = evaluate(p_eval, state.params, test, global_batch, n_devices, n_test, share)
        say(f'epoch {start_epoch - 1}: valid acc {valid_acc:.2f}% ({n_valid} examples), '
              f'test acc {test_acc:.2f}% ({n_test} examples)')
        return [{'epoch': start_epoch - 1, 'valid_acc': valid_acc, 'test_acc': test_acc}]

    # 5. epochs: train, evaluate, record, checkpoint
    workdir.mkdir(parents=True, exist_ok=True)
    history = utils.read_history(history_file)
    started = time.time()
    for epoch in range(start_epoch, config.epochs + 1):
        tic = time.time()
        if config.max_minutes is not None and epoch > start_epoch and \
                (tic - started) + (tic - started) / (epoch - start_epoch) > 60 * config.max_minutes:
            say(f'stopping after epoch {epoch - 1}: another epoch would not end within --max_minutes={config.max_minutes:g}; '
                f'the same command resumes')
            return history
        order = train_order(n_train, config.seed, epoch)
        epoch_key = jax.random.fold_in(dropout_key, epoch)
        totals = None
        bar = tqdm(train_batches(train, global_batch, order, share), total=steps_per_epoch, mininterval=1.,
                   desc=f'epoch {epoch}/{config.epochs}', dynamic_ncols=True, file=sys.stdout,
                   disable=not main_process)
        for step, batch in enumerate(bar):
            state, metrics = p_train(state, shard(batch, n_devices), jax.random.fold_in(epoch_key, step))
            totals = metrics if totals is None else jax.tree.map(jnp.add, totals, metrics)
            if step % 20 == 19 or step == steps_per_epoch - 1:  # values leave the device only here
                t = jax.device_get(unreplicate(totals))
                bar.set_postfix(loss=f"{t['loss'] / max(t['count'], 1):.4f}",
                                acc=f"{100 * t['correct'] / max(t['count'], 1):.2f}%",
                                ex_s=f"{t['count'] / (time.time() - tic):.1f}", refresh=False)
        bar.close()
        totals = jax.device_get(unreplicate(totals))
        train_seconds = time.time() - tic
        valid_acc, _ = evaluate(p_eval, state.params, valid, global_batch, n_devices, n_valid, share)
        test_acc, _ = evaluate(p_eval, state.params, test, global_batch, n_devices, n_test, share)
        row = {'epoch': epoch,
               'train_loss': round(float(totals['loss'] / max(totals['count'], 1)), 6),
               'train_acc': round(float(100 * totals['correct'] / max(totals['count'], 1)), 4),
               'valid_acc': round(valid_acc, 4), 'test_acc': round(test_acc, 4),
               'seconds': round(time.time() - tic, 2),
               'examples_per_second': round(float(totals['count']) / train_seconds, 2),
               'learning_rate': float(schedule(epoch * steps_per_epoch)),
               'skipped_batches': int(round(float(totals['skipped']))),
               'peak_memory_mb': round(peak_memory_mb(devices[0]), 1)}
        skipped = f", {row['skipped_batches']} batch(es) with NaN loss skipped" if row['skipped_batches'] else ''
        say(f"epoch {epoch}/{config.epochs}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.2f}% | "
              f"valid {valid_acc:.2f}% | test {test_acc:.2f}% | {row['seconds']:.0f} s, "
              f"{row['examples_per_second']:.1f} ex/s{skipped}")
        # history first, then the checkpoint: a crash in between leaves a row that resume drops again
        if main_process:
            utils.append_history(history_file, row)
        history.append(row)
        meta = {'epoch': epoch, 'config': dataclasses.asdict(config)}
        # every process takes part: orbax coordinates them, and the primary one writes the replicated state
        utils.save_checkpoint(checkpoints, epoch, jax.device_get(state_to_tree(unreplicate(state), dropout_key)), meta)
    say(f'done: {config.epochs} epochs; history in {history_file}, checkpoints in {checkpoints}')
    return history


def main(config, load_dataset, argv=None, complete=None):
    """Entry point of a task script: `--name=value` overrides of `config`, then `complete(config)` (a
    task's settings that follow from others, e.g. EMBER's batch from the length), then `run`."""
    argv = sys.argv[1:] if argv is None else argv
    complete = complete or (lambda c: c)
    try:
        return utils.exit_on_user_error(lambda: run(complete(utils.apply_overrides(config, argv)), load_dataset))
    except KeyboardInterrupt:
        print('\ninterrupted: the next run with the same settings resumes after the last finished epoch',
              file=sys.stderr)
        raise SystemExit(130) from None
