"""Each task script's configuration is the paper's; at full size its parameters (names, shapes, count) are
pinned without running it (jax.eval_shape); a shrunken copy of it trains one step and reads its input.

tests/fixtures/param_shapes.json holds every configuration's ordered parameter names and shapes. After a
deliberate change of architecture, regenerate it (then review the diff) with:
    python tests/test_paper_configs.py --write-fixture
"""
import dataclasses
import importlib
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import FIXTURES  # first: run as a script, it puts the repository root on the path  # noqa: I001
import trainer
from hrrformer import build_model

PAPER = {  # layers, embed, heads, MLP ratio, T, vocab, classes, positions, block, mask, LR decay
    'listops': (6, 512, 8, 0.5, 2000, 17, 10, 'learned', 'A', True, 0.9),
    'text': (6, 512, 8, 2.0, 4000, 257, 2, 'fixed', 'B', True, 0.9),
    'image': (3, 256, 4, 0.5, 1024, 256, 10, 'fixed', 'C', False, 0.95),
    'retrieval': (4, 128, 4, 0.5, 4000, 257, 2, 'fixed', 'A', True, 0.9),
    'pathfinder': (2, 1024, 8, 0.25, 1024, 256, 2, 'learned', 'D', False, 0.95),
    'pathx': (1, 1024, 8, 0.25, 16384, 256, 2, 'learned', 'D', False, 0.95),
}
TASKS = sorted(PAPER) + ['ember']
SCRIPTS = {'pathfinder': ('pathfinder.hrrformer_mgpu', 'pathfinder32'), 'pathx': ('pathfinder.hrrformer_mgpu', 'pathx')}
OPTIMISER = {'pathx': ('adamw', 16, 5e-4)}  # optimiser, batch per device, weight decay
HEADS = {'retrieval': 'dual'}  # two towers; every other task reads one sequence
FIELDS = ('n_layer', 'embed_size', 'heads', 'mlp_ratio', 'max_seq_len', 'vocab_size', 'num_classes',
          'positions', 'block', 'use_mask', 'lr_decay')
SHAPES_FILE = FIXTURES / 'param_shapes.json'


def paper_config(task):
    module, name = SCRIPTS.get(task, (f'{task}.hrrformer_mgpu', 'config'))
    return getattr(importlib.import_module(module), name)


def input_names(config):
    return ('inputs1', 'inputs2') if config.head == 'dual' else ('inputs',)


def param_shapes(config):
    """[name, shape] of every parameter, in flattening order, without computing anything."""
    model = build_model(config)
    inputs = {name: jax.ShapeDtypeStruct((1, config.max_seq_len), jnp.int32) for name in input_names(config)}
    params = jax.eval_shape(lambda key, inputs: model.init(key, **inputs, train=False), jax.random.PRNGKey(0),
                            inputs)['params']
    return [[jax.tree_util.keystr(path, simple=True, separator='/'), list(leaf.shape)]
            for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]]


def paper_count(config):
    """The parameter count paper.md implies, written out: embedding, layers, head."""
    e, hidden, bias = config.embed_size, int(config.embed_size * config.mlp_ratio), config.use_bias
    attention = 4 * e * e + (4 * e if bias else 0)                             # q, k, v, output
    mlp = e * hidden + hidden + hidden * e + (e if bias else 0)                # the second Dense: bias only if bias
    norms = {'A': 1, 'B': 2, 'C': 2, 'D': 1}[config.block] * 2 * e
    embedding = config.vocab_size * e + (config.max_seq_len * e if config.positions == 'learned' else 0)
    embedding += (2 * e if config.block == 'A' else 0) + (e if config.cls_token else 0)  # LN after it; CLS
    pooled = 4 * e if config.head == 'dual' else e                             # [m1, m2, m1*m2, m1-m2]
    head = pooled * e + e + e * config.num_classes + config.num_classes
    return embedding + config.n_layer * (attention + mlp + norms) + head


@pytest.mark.parametrize('task', sorted(PAPER))
def test_paper_configuration_values(task):
    paper = paper_config(task)
    assert paper.task == task
    assert tuple(getattr(paper, name) for name in FIELDS) == PAPER[task]
    assert (paper.lr, paper.epochs, paper.dropout_rate, paper.label_smoothing) == (1e-3, 20, 0.1, 0.1)
    if task in OPTIMISER:
        assert (paper.optimizer, paper.batch_size, paper.weight_decay) == OPTIMISER[task]
    else:
        assert paper.optimizer == 'adam'
    assert paper.head == HEADS.get(task, 'single')
    assert (paper.use_bias, paper.activation, paper.cls_token, paper.loss) == (False, 'gelu', False, 'cross_entropy')


@pytest.mark.parametrize('task', TASKS)
def test_full_size_parameters_are_the_stored_ones(task):
    config = paper_config(task)
    shapes = param_shapes(config)
    assert shapes == json.loads(SHAPES_FILE.read_text())[task], \
        f'the architecture of {task} changed; if on purpose, regenerate {SHAPES_FILE.name} (see this file\'s docstring)'
    assert sum(int(np.prod(shape)) for _, shape in shapes) == paper_count(config)


def test_listops_parameter_count_by_hand():
    e, layer = 512, 4 * 512 ** 2 + (512 * 256 + 256 + 256 * 512) + 2 * 512  # attention, MLP, LayerNorm
    embedding = 17 * e + 2000 * e + 2 * e                                      # tokens, positions, LayerNorm
    expected = 6 * layer + embedding + (e * e + e) + (e * 10 + 10)            # + the head
    assert expected == 9_173_514  # 6 x 1,312,000 + 1,033,728 + 267,786
    assert sum(int(np.prod(shape)) for _, shape in param_shapes(paper_config('listops'))) == expected


def shrunk(task, **changes):
    """The task's configuration at toy size: everything that decides the architecture's kind is kept."""
    paper = paper_config(task)
    return dataclasses.replace(paper, max_seq_len=32, embed_size=32, n_layer=min(paper.n_layer, 2), batch_size=1,
                               **changes)


def random_inputs(config, batch, seed=0):
    rng = np.random.default_rng(seed)
    return {name: rng.integers(1, config.vocab_size, size=(batch, config.max_seq_len)).astype(np.int32)
            for name in input_names(config)}


@pytest.mark.parametrize('task', TASKS)
def test_shrunken_configuration_trains_one_step(task, devices):
    config = shrunk(task)
    batch = random_inputs(config, 4)
    batch['targets'] = np.arange(4) % config.num_classes
    model = build_model(config)
    state, _ = trainer.init_state(config, model, batch, steps_per_decay=1)
    p_train, _ = trainer.compile_steps(config, model.apply, devices)
    after, metrics = p_train(trainer.replicate(state, devices), trainer.shard(batch, 4), jax.random.PRNGKey(0))
    metrics = trainer.unreplicate(metrics)
    assert float(metrics['count']) == 4 and float(metrics['nan']) == 0 and np.isfinite(float(metrics['loss']))
    moved = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(trainer.unreplicate(after.params)),
                                                     jax.tree.leaves(state.params))]
    assert all(moved), 'some parameters got no update'


@pytest.mark.parametrize('task', TASKS)
def test_output_depends_on_each_input(task):
    config = shrunk(task, dropout_rate=0.0)
    inputs = random_inputs(config, 2)
    model = build_model(config)
    apply = jax.jit(model.apply)
    params = {'params': model.init(jax.random.PRNGKey(0), **inputs)['params']}
    out = np.asarray(apply(params, **inputs))
    for name in input_names(config):  # each tower on its own
        changed = dict(inputs, **{name: random_inputs(config, 2, seed=1)[name]})
        assert np.abs(np.asarray(apply(params, **changed)) - out).max() > 1e-4, f'{name} is ignored'
        last = dict(inputs, **{name: inputs[name].copy()})
        last[name][:, -1] = last[name][:, -1] % (config.vocab_size - 1) + 1  # only the last token, to another one
        assert np.abs(np.asarray(apply(params, **last)) - out).max() > 1e-6, f'the last token of {name} is ignored'


@pytest.mark.parametrize('task', TASKS)
def test_softmax_baseline_has_the_same_interface(task):
    config = dataclasses.replace(paper_config(task), max_seq_len=48, n_layer=1, embed_size=32, heads=4)
    names = input_names(config)
    inputs = {n: np.random.default_rng(0).integers(1, config.vocab_size, size=(2, 48)).astype(np.int32) for n in names}
    inputs[names[0]][0, 30:] = 0  # some padding
    outputs = {}
    for attention in ('hrr', 'softmax'):
        model = build_model(dataclasses.replace(config, attention=attention))
        params = model.init(jax.random.PRNGKey(0), **inputs)['params']
        outputs[attention] = model.apply({'params': params}, **inputs)
    assert outputs['hrr'].shape == outputs['softmax'].shape == (2, config.num_classes)
    assert not np.allclose(outputs['hrr'], outputs['softmax'])


def write_fixture():
    """One parameter per line, so that a change of architecture reads as a short diff."""
    def entries(task):
        return ',\n'.join(f'    {json.dumps(entry)}' for entry in param_shapes(paper_config(task)))
    tasks = [f'  {json.dumps(task)}: [\n{entries(task)}\n  ]' for task in TASKS]
    SHAPES_FILE.write_text('{\n' + ',\n'.join(tasks) + '\n}\n')
    print(f'wrote {SHAPES_FILE}')


if __name__ == '__main__' and sys.argv[1:] == ['--write-fixture']:
    write_fixture()
