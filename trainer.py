"""The one training loop every task shares: jax.pmap data parallelism over all local devices.

Sections, top to bottom: configuration, input, model and optimiser, steps, checkpoint, evaluation, record,
loop. A task script builds a `Config` with its paper values and calls `main(config, load_dataset)`.
"""
import contextlib
import dataclasses
import math
import os
import sys
import time
import traceback
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization
from flax.training import train_state

import multihost
import runlock
import utils
from events import EventWriter
from hrrformer import build_model
from progress import Progress
from utils import UserError


# ============================================================================ configuration

@dataclasses.dataclass(frozen=True)
class Config:
    task: str = 'listops'             # names the default workdir, weights/<task>_<n_layer>
    # data
    data_dir: Optional[str] = None    # None: the task's default location (see its dataset.py)
    vocab_size: int = 17              # token ids 0..vocab_size-1, 0 = padding
    num_classes: int = 10             # labels 0..num_classes-1
    max_seq_len: int = 2000           # tokens per sequence (truncated or padded to this)
    train_examples: Optional[int] = None  # use only the first N training examples (None: all)
    eval_examples: Optional[int] = None   # use only the first N validation and test examples (None: all)
    # model
    n_layer: int = 6                  # encoder layers
    embed_size: int = 512             # width E of the embeddings and of every layer
    heads: int = 8                    # attention heads; embed_size must be divisible by them
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
    dropout_rate: float = 0.1         # after the embedding, the attention and the MLP
    # optimisation
    batch_size: int = 2               # per device; the global batch is this times the device count
    epochs: int = 20                  # passes over the training examples
    lr: float = 1e-3                  # initial learning rate
    lr_decay: float = 0.9             # multiplied in smoothly over every decay_examples examples trained on
    decay_examples: Optional[int] = None  # examples per decay period, fixed in each original script
                                      # (None: the training examples used, i.e. lr_decay per epoch)
    end_lr: float = 1e-5              # the learning rate never decays below this
    optimizer: str = 'adam'           # 'adam' or 'adamw'
    weight_decay: float = 0.0         # AdamW only
    loss: str = 'cross_entropy'       # or 'binary_cross_entropy' on the class probabilities (EMBER)
    label_smoothing: float = 0.1      # of the cross-entropy's one-hot labels
    seed: int = 0                     # parameters, dropout and the order of training examples
    # run
    workdir: Optional[str] = None     # None: weights/<task>_<n_layer> (+ _seed<seed> unless 0) in the repository
    eval_only: bool = False           # evaluate the run in workdir (with its own saved settings) and stop
    checkpoint_minutes: float = 30.   # also checkpoint inside an epoch this often (0: only after each epoch)
    max_minutes: Optional[float] = None  # stop after the last whole epoch that fits in this many minutes
    # several processes (hosts): jax.distributed; under SLURM and similar schedulers JAX finds these itself
    coordinator_address: Optional[str] = None  # host:port of process 0
    num_processes: Optional[int] = None        # processes in the run
    process_id: Optional[int] = None           # this process's number, 0 ... num_processes - 1


# A checkpoint can be resumed only by a run with the same values of these fields.
MODEL_FIELDS = ('task', 'vocab_size', 'num_classes', 'max_seq_len', 'n_layer', 'embed_size', 'heads',
                'mlp_ratio', 'block', 'positions', 'use_mask', 'head', 'use_bias', 'activation', 'cls_token',
                'attention', 'optimizer')
# Settings of how a run is carried out, not of what it computes: they may change between its sessions.
RUN_FIELDS = ('workdir', 'eval_only', 'epochs', 'checkpoint_minutes', 'max_minutes', 'coordinator_address',
              'num_processes', 'process_id', 'loader_workers')
TASK_FIELDS = ('task', 'vocab_size', 'num_classes')  # what a task script fixes itself (--help says so)


def check_config(config):
    """Stop with one line on settings that cannot work, or that the schedule or the loss would silently
    replace by others."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f'--{field.name} must be a finite number, not {value}')
    positive = ('vocab_size', 'max_seq_len', 'n_layer', 'embed_size', 'heads', 'batch_size', 'epochs')
    for name in positive:
        if getattr(config, name) < 1:
            raise UserError(f'--{name} must be at least 1, not {getattr(config, name)}')
    if config.num_classes < 2:
        raise UserError(f'--num_classes must be at least 2, not {config.num_classes}')
    if config.embed_size % config.heads:
        raise UserError(f'--embed_size={config.embed_size} must be divisible by --heads={config.heads}')
    if int(config.embed_size * config.mlp_ratio) < 1:
        raise UserError(f'--mlp_ratio={config.mlp_ratio:g} leaves the MLP no hidden units: use a positive ratio')
    choices = {'block': 'ABCD', 'positions': ('learned', 'fixed'), 'head': ('single', 'dual'),
               'optimizer': ('adam', 'adamw'), 'activation': ('gelu', 'relu'), 'attention': ('hrr', 'softmax'),
               'dtype': ('float32', 'bfloat16'), 'softmax_impl': ('auto', 'xla', 'cudnn'),
               'loss': ('cross_entropy', 'binary_cross_entropy')}
    for name, allowed in choices.items():
        if getattr(config, name) not in allowed:
            raise UserError(f'--{name} must be one of {", ".join(allowed)}, not {getattr(config, name)!r}')
    for name in ('train_examples', 'eval_examples', 'decay_examples'):
        if getattr(config, name) is not None and getattr(config, name) < 1:
            raise UserError(f'--{name} must be at least 1 (or none), not {getattr(config, name)}')
    if config.lr <= 0:
        raise UserError(f'--lr must be positive, not {config.lr:g}')
    if not 0 < config.end_lr <= config.lr:
        raise UserError(f'--lr={config.lr:g} and --end_lr={config.end_lr:g}: the schedule decays from lr to end_lr '
                        f'and never below it, so end_lr must be positive and at most lr (lower --end_lr)')
    if not 0 < config.lr_decay <= 1:
        raise UserError(f'--lr_decay must be in (0, 1] (1: a constant learning rate), not {config.lr_decay:g}')
    if not 0 <= config.label_smoothing < 1:
        raise UserError(f'--label_smoothing must be in [0, 1), not {config.label_smoothing:g}')
    if not 0 <= config.dropout_rate < 1:
        raise UserError(f'--dropout_rate must be in [0, 1), not {config.dropout_rate:g}')
    if config.weight_decay < 0:
        raise UserError(f'--weight_decay must not be negative, not {config.weight_decay:g}')
    if config.seed < 0:
        raise UserError(f'--seed must not be negative, not {config.seed}')
    if config.checkpoint_minutes < 0 or (config.max_minutes is not None and config.max_minutes <= 0):
        raise UserError('--checkpoint_minutes must not be negative and --max_minutes must be positive (or none)')


def workdir_of(config):
    if config.workdir is not None:
        return Path(config.workdir).expanduser().resolve()
    return utils.ROOT / 'weights' / (f'{config.task}_{config.n_layer}' + (f'_seed{config.seed}' if config.seed else ''))


# ============================================================================ input
# A split is a dict of numpy arrays with one leading example axis ('targets' (N,) and the model's
# inputs: 'inputs', or 'inputs1' and 'inputs2'), or any object with len() and
# batches(index_batches) -> one such dict per array of example indices (EMBER streams its files so);
# such an object may offer `labels` (N,), which the checks below then read without loading any example.

class ArraySplit:
    """An in-memory split: a batch is numpy indexing."""

    def __init__(self, arrays):
        self.arrays = arrays
        self.labels = arrays['targets']

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


def check_labels(split, n, num_classes, name):
    """Stop on labels outside 0..num_classes-1, and on a first-n subset that holds one class only where the
    whole split has several and a fair sample could hardly do that (a split ordered by class)."""
    labels = getattr(split, 'labels', None)
    if labels is None:
        return
    labels = np.asarray(labels)
    if labels.size and (not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= num_classes):
        raise UserError(f'the {name} labels run from {labels.min()} to {labels.max()}, not within 0..{num_classes - 1}: '
                        f'check the data (or --num_classes)')
    shares = np.bincount(labels, minlength=num_classes) / max(len(labels), 1)
    first = np.unique(labels[:n])
    if n < len(labels) and len(first) == 1 and np.sum(shares ** n) < 1e-4:
        raise UserError(f'the first {n} {name} examples are all of class {first[0]}, while the split holds '
                        f'{np.count_nonzero(shares)} classes: its examples are ordered by class, so a subset '
                        f'(--train_examples/--eval_examples) would not be a fair sample')


def train_order(n, seed, epoch):
    """The order of training examples: a function of the seed and the epoch only (not of the devices)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def train_batches(split, global_batch, order, share=slice(None), first=0):
    """Full batches in `order` from batch `first` on (the last partial batch is dropped); of each, this
    process's `share`."""
    starts = range(first * global_batch, len(order) - global_batch + 1, global_batch)
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

def decay_steps(config, n_train, global_batch):
    """Optimiser steps per decay period: the original's `N // global batch`, where N is the example count
    each original script wrote in (decay_examples) or, unset, the training examples used."""
    return max((config.decay_examples or n_train) // global_batch, 1)


def make_optimizer(config, steps_per_decay):
    """Adam or AdamW with a smooth exponential decay of `lr_decay` per `steps_per_decay` steps, floored at
    `end_lr`, starting after the first step: the original's optax.exponential_decay."""
    # (optax floors with max() only when the rate is below 1: with 1 it would clip the constant lr to end_lr)
    schedule = optax.exponential_decay(init_value=config.lr, transition_steps=max(steps_per_decay, 1),
                                       decay_rate=config.lr_decay, transition_begin=1,
                                       end_value=config.end_lr if config.lr_decay < 1 else None)
    if config.optimizer == 'adamw':
        return optax.adamw(schedule, weight_decay=config.weight_decay), schedule
    return optax.adam(schedule), schedule


def init_state(config, model, example_batch, steps_per_decay):
    """A fresh TrainState; the parameters depend only on the seed."""
    inputs = {key: jnp.asarray(value[:1]) for key, value in example_batch.items() if key != 'targets'}
    params = jax.jit(partial(model.init, train=False))(jax.random.PRNGKey(config.seed), **inputs)['params']
    tx, schedule = make_optimizer(config, steps_per_decay)
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
    """One step on this device's share of the global batch, with the original's NaN handling: nothing is
    ever skipped. LRA scripts: a NaN per-example loss counts 0 (jnp.nan_to_num) and NaN gradients are set
    to 0 before they are averaged over devices. The EMBER script (binary cross-entropy) does not mask its
    loss and averages the gradients first, then sets NaN to 0. The update is always applied: with all
    gradients 0, Adam's moments still advance. Metrics are psummed sums; NaN examples are counted."""
    key = jax.random.fold_in(key, jax.lax.axis_index('batch'))  # a different dropout mask per device
    lra = loss == 'cross_entropy'

    def loss_fn(params):
        log_probs = state.apply_fn({'params': params}, **model_inputs(batch), train=True, rngs={'dropout': key})
        losses = per_example_loss(log_probs, batch['targets'], num_classes, smoothing, loss)     # (b,)
        return jnp.mean(jnp.nan_to_num(losses) if lra else losses), (log_probs, losses)

    (_, (log_probs, losses)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    if lra:
        grads = jax.lax.pmean(jax.tree.map(jnp.nan_to_num, grads), 'batch')
    else:
        grads = jax.tree.map(jnp.nan_to_num, jax.lax.pmean(grads, 'batch'))
    state = state.apply_gradients(grads=grads)
    nan = jnp.isnan(losses)
    metrics = {'loss': jnp.sum(jnp.where(nan, 0., losses)), 'nan': jnp.sum(nan).astype(jnp.float32),
               'correct': jnp.sum(jnp.argmax(log_probs, -1) == batch['targets']).astype(jnp.float32),
               'count': jnp.float32(losses.shape[0])}
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
    """The copy on this process's first device. (Indexing the global array instead made a process whose
    devices do not hold element 0 start a cross-process computation of its own, which its peers never joined.)"""
    return jax.tree.map(lambda x: x.addressable_data(0)[0], tree)


# ============================================================================ checkpoint
# A checkpoint is named by the optimiser step. Its meta holds the configuration, `epoch` (the epochs
# completed) and `epoch_step` (the steps done of the next epoch: 0 at an epoch's end, more for a
# checkpoint taken inside an epoch, with the epoch's metrics so far in `partial`).

def state_to_tree(state, dropout_key):
    return {'step': jnp.asarray(state.step, jnp.int32), 'params': state.params,  # int32 as the optimiser counts
            'opt_state': serialization.to_state_dict(state.opt_state), 'dropout_key': dropout_key}


def tree_to_state(state, tree):
    return state.replace(step=tree['step'], params=tree['params'],
                         opt_state=serialization.from_state_dict(state.opt_state, tree['opt_state']))


def saved_value(saved, name):
    """A field of a saved configuration; a field newer than the checkpoint had its default then."""
    return saved.get(name, getattr(Config(), name, None))


def check_compatible(saved, config, directory):
    """Refuse a checkpoint written by a different model configuration; say which training settings differ."""
    diffs = [f'{name}={saved_value(saved, name)!r} there, {getattr(config, name)!r} here'
             for name in MODEL_FIELDS if saved_value(saved, name) != getattr(config, name)]
    if diffs:
        raise UserError(f'the checkpoint in {directory} was written by a different model configuration '
                        f'({"; ".join(diffs)}): use the same settings, or another --workdir')
    changed = [f'{field.name}={saved_value(saved, field.name)!r} there, {getattr(config, field.name)!r} here'
               for field in dataclasses.fields(config) if field.name not in MODEL_FIELDS + RUN_FIELDS
               and field.name in saved and saved[field.name] != getattr(config, field.name)]
    if changed and not config.eval_only:
        print(f'warning: resuming with training settings that differ from the checkpoint\'s: {"; ".join(changed)}',
              file=sys.stderr)


def _readable(directory, read, what):
    """(step, read(step)) for the newest checkpoint where it works; a damaged checkpoint (a crash, a disk
    fault, a flipped byte caught by the checksum) is reported and the one before it is tried. None when
    there are no checkpoints."""
    steps = utils.checkpoint_steps(directory)
    for step in steps:
        try:
            return step, read(step)
        except Exception as error:  # noqa: BLE001 - any damage to the files means: try the previous one
            print(f'warning: the {what} of the step {step} checkpoint in {directory} cannot be read '
                  f'({type(error).__name__}: {str(error)[:200]}); trying the one before it', file=sys.stderr)
    if steps:
        raise UserError(f'no checkpoint in {directory} can be read; delete that folder to start again')
    return None


def latest_meta(directory):
    """The meta (epoch, configuration, ...) of the newest readable checkpoint, or None."""
    found = _readable(directory, lambda step: utils.restore_meta(directory, step), 'metadata')
    return None if found is None else found[1]


def restore_latest(directory, like):
    """(tree, meta) of the newest readable checkpoint, or None. Damaged newer ones are deleted, so that
    they never outlive a good one in the rotation."""
    found = _readable(directory, lambda step: utils.restore_checkpoint(directory, step, like), 'state')
    if found is None:
        return None
    for damaged in [s for s in utils.checkpoint_steps(directory) if s > found[0]]:
        utils.delete_checkpoint(directory, damaged)
    return found[1]


@jax.jit
def all_finite(tree):
    return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


class Diverged(UserError):
    """Training produced NaN or infinite values: the run stops, keeping its last good checkpoint."""


def save(directory, state, dropout_key, meta, lr):
    """Checkpoint the (replicated) state, unless its parameters are no longer finite: such a checkpoint is
    never written, so that the last good one is never rotated away."""
    if not bool(all_finite(unreplicate(state.params))):
        raise Diverged(f'training diverged in epoch {meta["epoch"] + (1 if meta.get("epoch_step") else 0)}: the '
                       f'parameters are no longer finite; nothing of it was saved, the last good checkpoint in '
                       f'{directory} is kept: resume from it with a smaller --lr (now {lr:g})')
    tree = jax.device_get(state_to_tree(unreplicate(state), dropout_key))
    # every process takes part: orbax coordinates them, and the primary one writes the replicated state
    utils.save_checkpoint(directory, int(tree['step']), tree, meta, primary=jax.process_index() == 0)


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


# ============================================================================ record
# What a run shows and logs as it goes: the progress line, and TensorBoard scalars in the workdir
# (process 0 only; history.csv and the checkpoints are written by the loop itself).

SYNC_STEPS = 20  # metrics leave the devices every this many steps (and at an epoch's end)


class Monitor:
    def __init__(self, workdir, enabled):
        self.enabled = enabled
        self.events = EventWriter(workdir) if enabled else None
        self.progress, self.last = None, None

    def start_epoch(self, epoch, epochs, steps, first, carried):
        self.progress = Progress(f'epoch {epoch}/{epochs}', steps, first, enabled=self.enabled)
        self.last, self.tic = dict(carried), time.time()

    def first_step_done(self):
        self.progress.first_step_done()

    def steps(self, done, global_step, totals, lr):
        """At a sync point: the epoch's progress, and the loss and accuracy of the steps since the last one."""
        count = max(totals['count'], 1)
        rate = (totals['count'] - self.last['count']) / max(time.time() - self.tic, 1e-9)
        self.progress.update(done, loss=f"{totals['loss'] / max(totals['count'] - totals['nan'], 1):.4f}",
                             acc=f"{100 * totals['correct'] / count:.2f}%", ex_s=f'{rate:.1f}')
        if self.events is not None:
            new = {key: totals[key] - self.last[key] for key in totals}
            self.events.scalar('train/loss', new['loss'] / max(new['count'] - new['nan'], 1), global_step)
            self.events.scalar('train/accuracy', 100 * new['correct'] / max(new['count'], 1), global_step)
            self.events.scalar('train/learning_rate', lr, global_step)
            self.events.scalar('train/examples_per_second', rate, global_step)
        self.last, self.tic = dict(totals), time.time()

    def epoch(self, row, global_step):
        self.progress.close()
        if self.events is not None:
            for key in ('valid_acc', 'test_acc', 'peak_memory_mb', 'nan_examples', 'train_loss', 'train_acc'):
                self.events.scalar(f'epoch/{key}', row[key], global_step)
            self.events.flush()

    def close(self):
        if self.events is not None:
            self.events.close()


# ============================================================================ loop

def workdir_lock(workdir, enabled):
    """One run per workdir (runlock). The processes of a multi-process run are one run: process 0 holds the
    lock and tells the others whether it got it."""
    stack = contextlib.ExitStack()
    if not enabled:
        return stack
    refused = ''
    if jax.process_index() == 0:
        try:
            stack.enter_context(runlock.hold(workdir))
        except UserError as error:
            refused = str(error)
    refused = multihost.from_process_0('lock', refused)
    if refused:
        raise UserError(refused)
    return stack


def run(config, load_dataset: Callable, devices=None):
    """Train (or with eval_only, evaluate) `config` on the splits `load_dataset(config)` returns.
    Resumes from the newest checkpoint in the workdir, which no other run may use meanwhile.
    Returns the history rows (dicts)."""
    check_config(config)
    multihost.join(config.coordinator_address, config.num_processes, config.process_id)
    with workdir_lock(workdir_of(config), enabled=not config.eval_only):
        history = train_and_evaluate(config, load_dataset, devices)
    multihost.finish()
    return history


def train_and_evaluate(config, load_dataset, devices=None):
    """The body of `run`, with the workdir locked."""
    # 1. devices, the workdir and its newest checkpoint; a finished run stops here, before any data is loaded
    devices = list(devices or jax.local_devices())
    n_devices, process, processes = len(devices), jax.process_index(), jax.process_count()
    global_batch = config.batch_size * n_devices * processes   # every device of every process
    per_process = config.batch_size * n_devices
    share = slice(process * per_process, (process + 1) * per_process)  # this process's rows of a global batch
    main_process = process == 0
    say = print if main_process else (lambda *args, **kwargs: None)  # logs and files: process 0 only
    workdir = workdir_of(config)
    checkpoints, history_file = workdir / 'checkpoints', workdir / 'history.csv'
    if not config.eval_only:
        multihost.barrier('start')
        utils.open_checkpoints(checkpoints)  # orbax's manager synchronises the processes: all of them, now
    saved = latest_meta(checkpoints)
    if saved is not None:
        check_compatible(saved['config'], config, checkpoints)
        if saved['epoch'] >= config.epochs and not saved.get('epoch_step') and not config.eval_only:
            say(f'{workdir}: finished, all {config.epochs} epochs done (history in {history_file}); '
                f'raise --epochs to train further, or --eval_only=true to evaluate')
            return utils.read_history(history_file)
    elif config.eval_only:
        raise UserError(f'no checkpoint in {checkpoints} to evaluate: train first, or point --workdir at a run')

    # 2. data
    train, valid, test = load_dataset(config)
    one_split = valid is test  # Text (and EMBER with valid_fraction 0) validate on the test split: evaluate it once
    train, valid = as_split(train), as_split(valid)
    test = valid if one_split else as_split(test)
    n_train, n_valid, n_test = used(train, config.train_examples), used(valid, config.eval_examples), \
        used(test, config.eval_examples)
    for split, n, name in ((train, n_train, 'training'), (valid, n_valid, 'validation'), (test, n_test, 'test')):
        check_labels(split, n, config.num_classes, name)
    steps_per_epoch = n_train // global_batch
    if steps_per_epoch == 0 and not config.eval_only:
        raise UserError(f'{n_train} training examples do not fill one global batch of {global_batch} '
                        f'(--batch_size={config.batch_size} x {n_devices} devices): use more examples or a smaller batch')
    say(f'{config.task}: {n_train} train / {n_valid} valid / {n_test} test examples; '
        f'{n_devices * processes} {devices[0].platform} device(s){f" in {processes} processes" if processes > 1 else ""}'
        f' x batch {config.batch_size} = {global_batch} per step, {steps_per_epoch} steps per epoch')

    # 3. model, optimiser and a fresh state
    model = build_model(config)
    state, schedule = init_state(config, model, next(train.batches([np.arange(1)])),
                                 decay_steps(config, n_train, global_batch))
    dropout_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 1)
    say(f'model: {count_params(state.params):,} parameters, {config.n_layer} layer(s), block {config.block}; '
        f'workdir {workdir}')

    # 4. resume: the newest readable checkpoint replaces the fresh state, and the run goes on from the step
    #    after it (inside an epoch, with that epoch's metrics so far); history rows of epochs that have no
    #    checkpoint (written just before a crash) are dropped
    start_epoch, first_step, carried = 1, 0, dict.fromkeys(('loss', 'nan', 'correct', 'count', 'seconds'), 0.)
    restored = restore_latest(checkpoints, state_to_tree(state, dropout_key)) if saved is not None else None
    if restored is not None:
        tree, meta = restored
        state, dropout_key = tree_to_state(state, tree), tree['dropout_key']
        start_epoch, first_step = meta['epoch'] + 1, min(meta.get('epoch_step', 0), steps_per_epoch)
        carried.update(meta.get('partial', {}) if first_step else {})
        if not config.eval_only:
            say(f'resumed from epoch {meta["epoch"]}' + (f', step {first_step} of epoch {start_epoch}' if first_step else ''))
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

    # 5. epochs: train (checkpointing every checkpoint_minutes), evaluate, record, checkpoint
    history = utils.read_history(history_file)
    monitor = Monitor(workdir, enabled=main_process)
    started = last_save = time.time()
    for epoch in range(start_epoch, config.epochs + 1):
        if config.max_minutes is not None and epoch > start_epoch and \
                (time.time() - started) * (epoch - start_epoch + 1) / (epoch - start_epoch) > 60 * config.max_minutes:
            say(f'stopping after epoch {epoch - 1}: another epoch would not end within --max_minutes='
                f'{config.max_minutes:g}; the same command resumes')
            break
        order = train_order(n_train, config.seed, epoch)
        epoch_key = jax.random.fold_in(dropout_key, epoch)
        first = first_step if epoch == start_epoch else 0
        carry = carried if epoch == start_epoch else dict.fromkeys(carried, 0.)
        monitor.start_epoch(epoch, config.epochs, steps_per_epoch, first, carry)
        tic, totals, now = time.time(), None, dict(carry)
        for step, batch in enumerate(train_batches(train, global_batch, order, share, first), start=first):
            state, metrics = p_train(state, shard(batch, n_devices), jax.random.fold_in(epoch_key, step))
            totals = metrics if totals is None else jax.tree.map(jnp.add, totals, metrics)
            if step == first:
                jax.block_until_ready(metrics)  # the first step compiles: the time left is measured after it
                monitor.first_step_done()
            if (step + 1) % SYNC_STEPS and step + 1 < steps_per_epoch:
                continue
            now = {key: float(value) + carry[key] for key, value in jax.device_get(unreplicate(totals)).items()}
            now['seconds'] = carry['seconds'] + time.time() - tic
            monitor.steps(step + 1, int(unreplicate(state.step)), now, float(schedule(unreplicate(state.step))))
            due = config.checkpoint_minutes > 0 and time.time() - last_save > 60 * config.checkpoint_minutes
            if step + 1 < steps_per_epoch and multihost.from_process_0(f'save/{epoch}/{step}', 'yes' if due else ''):
                save(checkpoints, state, dropout_key, {'epoch': epoch - 1, 'epoch_step': step + 1, 'partial': now,
                                                       'config': dataclasses.asdict(config)}, config.lr)
                last_save = time.time()
        totals = now
        lr = float(schedule(unreplicate(state.step)))
        good = totals['count'] - totals['nan']
        train_loss = totals['loss'] / good if good else float('nan')
        if totals['nan'] > totals['count'] / 2 or not math.isfinite(train_loss):
            raise Diverged(f'training diverged in epoch {epoch}: {totals["nan"]:.0f} of {totals["count"]:.0f} training '
                           f'examples gave NaN losses; nothing of the epoch was saved, the last good checkpoint in '
                           f'{checkpoints} is kept: resume from it with a smaller --lr (now {config.lr:g})')
        valid_acc, _ = evaluate(p_eval, state.params, valid, global_batch, n_devices, n_valid, share)
        test_acc = valid_acc if one_split else \
            evaluate(p_eval, state.params, test, global_batch, n_devices, n_test, share)[0]
        row = {'epoch': epoch, 'train_loss': round(train_loss, 6),
               'train_acc': round(100 * totals['correct'] / max(totals['count'], 1), 4),
               'valid_acc': round(valid_acc, 4), 'test_acc': round(test_acc, 4),
               'seconds': round(time.time() - tic + carry['seconds'], 2),
               'examples_per_second': round((totals['count'] - carry['count']) / max(time.time() - tic, 1e-9), 2),
               'learning_rate': lr, 'nan_examples': int(totals['nan']),
               'peak_memory_mb': round(peak_memory_mb(devices[0]), 1)}
        monitor.epoch(row, int(unreplicate(state.step)))
        nan = f", {row['nan_examples']} example(s) with NaN loss (counted 0)" if row['nan_examples'] else ''
        say(f"epoch {epoch}/{config.epochs}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.2f}% | "
            f"valid {valid_acc:.2f}% | test {test_acc:.2f}% | {row['seconds']:.0f} s, "
            f"{row['examples_per_second']:.1f} ex/s{nan}")
        # history first, then the checkpoint: a crash in between leaves a row that resume drops again
        if main_process:
            utils.append_history(history_file, row)
        history.append(row)
        save(checkpoints, state, dropout_key, {'epoch': epoch, 'epoch_step': 0, 'config': dataclasses.asdict(config)},
             config.lr)
        last_save = time.time()
    else:
        say(f'done: {config.epochs} epochs; history in {history_file}, checkpoints in {checkpoints}')
    monitor.close()
    return history


def settings_of_run(base, argv, complete):
    """For --eval_only: the run's own configuration, saved with its newest checkpoint, with this command's
    --name=value settings on top; so `--eval_only=true --workdir=DIR` alone evaluates the run in DIR."""
    config = complete(utils.apply_overrides(base, argv))
    meta = utils.newest_meta_json(workdir_of(config) / 'checkpoints')
    if meta is None:
        return config  # run() says there is nothing to evaluate
    if meta['config'].get('task') != base.task:
        raise UserError(f'{workdir_of(config)} holds a {meta["config"].get("task")} run: evaluate it with that '
                        f'task\'s script')
    known = {field.name for field in dataclasses.fields(base)}
    saved = {name: value for name, value in meta['config'].items() if name in known and name not in RUN_FIELDS}
    return complete(utils.apply_overrides(dataclasses.replace(base, **saved), argv))


def main(config, load_dataset, argv=None, complete=None):
    """Entry point of a task script: --help, `--name=value` overrides of `config`, then `complete(config)`
    (a task's settings that follow from others, e.g. EMBER's batch from the length), then `run`."""
    argv = sys.argv[1:] if argv is None else argv
    complete = complete or (lambda c: c)
    if {'-h', '--help'} & set(argv):
        about = (getattr(sys.modules.get('__main__'), '__doc__', None) or '').split('\n\n')[0]
        print(utils.config_help(config, os.path.relpath(sys.argv[0]), about, TASK_FIELDS), end='')
        return None

    def start():
        settings = complete(utils.apply_overrides(config, argv))
        return run(settings_of_run(config, argv, complete) if settings.eval_only else settings, load_dataset)
    try:
        return start()
    except UserError as error:
        status, message = 2, str(error)
        print(f'error: {message}', file=sys.stderr)
    except KeyboardInterrupt:
        status, message = 130, 'interrupted'
        print('\ninterrupted: the next run with the same settings resumes from the last checkpoint', file=sys.stderr)
    except Exception as error:
        if not jax.distributed.is_initialized():
            raise
        traceback.print_exc()
        status, message = 1, f'{type(error).__name__}: {error}'
    if jax.distributed.is_initialized():
        multihost.leave(message, status)  # the other processes stop at once, not after a timeout
    raise SystemExit(status)
