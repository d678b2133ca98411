"""Each task script's configuration is the paper's, and at full size it builds and trains one step on CPU."""
import dataclasses
import importlib

import jax
import numpy as np
import pytest

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
SCRIPTS = {'pathfinder': ('pathfinder.hrrformer_mgpu', 'pathfinder32'), 'pathx': ('pathfinder.hrrformer_mgpu', 'pathx')}
OPTIMISER = {'pathx': ('adamw', 16, 5e-4)}  # optimiser, batch per device, weight decay
HEADS = {'retrieval': 'dual'}  # two towers; every other task reads one sequence
FIELDS = ('n_layer', 'embed_size', 'heads', 'mlp_ratio', 'max_seq_len', 'vocab_size', 'num_classes',
          'positions', 'block', 'use_mask', 'lr_decay')


@pytest.mark.parametrize('task', sorted(PAPER))
def test_paper_configuration_trains_one_step(task, devices):
    module, name = SCRIPTS.get(task, (f'{task}.hrrformer_mgpu', 'config'))
    paper = getattr(importlib.import_module(module), name)
    assert paper.task == task
    assert tuple(getattr(paper, name) for name in FIELDS) == PAPER[task]
    assert (paper.lr, paper.epochs, paper.dropout_rate, paper.label_smoothing) == (1e-3, 20, 0.1, 0.1)
    if task in OPTIMISER:
        assert (paper.optimizer, paper.batch_size, paper.weight_decay) == OPTIMISER[task]
    else:
        assert paper.optimizer == 'adam'
    assert paper.head == HEADS.get(task, 'single')
    config = dataclasses.replace(paper, batch_size=1)
    rng = np.random.default_rng(0)
    names = ('inputs1', 'inputs2') if config.head == 'dual' else ('inputs',)
    batch = {name: rng.integers(1, config.vocab_size, size=(4, config.max_seq_len)).astype(np.int32)
             for name in names}
    batch['targets'] = np.arange(4) % config.num_classes
    model = build_model(config)
    state, _ = trainer.init_state(config, model, batch, steps_per_decay=1)
    if task == 'listops':  # the architecture, counted by hand
        e, layer = 512, 4 * 512 ** 2 + (512 * 256 + 256 + 256 * 512) + 2 * 512  # attention, MLP, LayerNorm
        embedding = 17 * e + 2000 * e + 2 * e                                      # tokens, positions, LayerNorm
        assert trainer.count_params(state.params) == 6 * layer + embedding + (e * e + e) + (e * 10 + 10)
    p_train, _ = trainer.compile_steps(config, model.apply, devices)
    state, metrics = p_train(trainer.replicate(state, devices), trainer.shard(batch, 4), jax.random.PRNGKey(0))
    metrics = trainer.unreplicate(metrics)
    assert float(metrics['count']) == 4 and np.isfinite(float(metrics['loss']))


@pytest.mark.parametrize('task', sorted(PAPER) + ['ember'])
def test_softmax_baseline_has_the_same_interface(task):
    module, name = SCRIPTS.get(task, (f'{task}.hrrformer_mgpu', 'config'))
    paper = getattr(importlib.import_module(module), name)
    config = dataclasses.replace(paper, max_seq_len=48, n_layer=1, embed_size=32, heads=4)
    names = ('inputs1', 'inputs2') if config.head == 'dual' else ('inputs',)
    inputs = {n: np.random.default_rng(0).integers(1, config.vocab_size, size=(2, 48)).astype(np.int32) for n in names}
    inputs[names[0]][0, 30:] = 0  # some padding
    outputs = {}
    for attention in ('hrr', 'softmax'):
        model = build_model(dataclasses.replace(config, attention=attention))
        params = model.init(jax.random.PRNGKey(0), **inputs)['params']
        outputs[attention] = model.apply({'params': params}, **inputs)
    assert outputs['hrr'].shape == outputs['softmax'].shape == (2, config.num_classes)
    assert not np.allclose(outputs['hrr'], outputs['softmax'])
