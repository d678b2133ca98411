"""The reproduction report (benchmarks/report.py) and the weight maps (benchmarks/visualize.py)."""
import dataclasses
import json
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / 'benchmarks'))
import report  # noqa: E402
import visualize  # noqa: E402

PNG = b'\x89PNG\r\n\x1a\n'


# ----------------------------------------------------------------------------- the report

def make_run(folder, accuracies, losses=None, step=None, drop=(), **changes):
    """A run folder as the trainer leaves it: history.csv with one row per (valid, test) accuracy and a
    checkpoint whose metadata holds the task's paper configuration with `changes` (fields in `drop`
    left out, as an older checkpoint would). step=None: no checkpoint."""
    from utils import append_history
    folder.mkdir(parents=True)
    losses = losses or [2.0 / epoch for epoch in range(1, len(accuracies) + 1)]
    for epoch, ((valid, test), loss) in enumerate(zip(accuracies, losses), start=1):
        append_history(folder / 'history.csv', {'epoch': epoch, 'train_loss': loss, 'train_acc': 30 + epoch,
                                                'valid_acc': valid, 'test_acc': test, 'seconds': 1.0,
                                                'examples_per_second': 10.0, 'learning_rate': 1e-3,
                                                'skipped_batches': 0, 'peak_memory_mb': 100.0})
    if step is not None:
        task = folder.name.split('_')[0]
        config = dataclasses.asdict(dataclasses.replace(report.paper_config(task), workdir=str(folder), **changes))
        config = {k: v for k, v in config.items() if k not in drop}
        write_meta(folder, step, {'epoch': len(accuracies), 'config': config})


def write_meta(folder, step, meta):
    (folder / 'checkpoints' / str(step) / 'meta').mkdir(parents=True)
    (folder / 'checkpoints' / str(step) / 'meta' / 'metadata').write_text(json.dumps(meta))


def read_report(path):
    """{section title: {first cell: {column: cell}}} of the Markdown tables in report.md."""
    sections, title, header = {}, None, None
    for line in path.read_text().splitlines():
        if line.startswith('## '):
            title, header = line[3:], None
        elif line.startswith('|') and not line.startswith('|---'):
            cells = [cell.strip() for cell in line.split('|')[1:-1]]
            if header is None:
                header = cells
            else:
                sections.setdefault(title, {})[cells[0] if title.startswith('Long') else cells[-1]] = \
                    dict(zip(header, cells))
    return sections


def write_report(tmp_path, *extra):
    report.main([f'--weights={tmp_path / "w"}', f'--output={tmp_path / "report.md"}', *extra])
    return read_report(tmp_path / 'report.md')


def test_report_puts_the_right_numbers_in_the_right_cells(tmp_path):
    w = tmp_path / 'w'
    make_run(w / 'listops_6', [(30.0, 31.0), (40.0, 38.5), (35.0, 39.9)], step=3)  # best valid: epoch 2
    make_run(w / 'image_1', [(45.0, 44.25), (47.5, 46.75)], step=2, n_layer=1)
    make_run(tmp_path / 'elsewhere' / 'text_6', [(60.0, 62.0)], step=1)  # a run outside --weights
    sections = write_report(tmp_path, f'--workdir={tmp_path / "elsewhere" / "text_6"}')
    rows = sections['Long Range Arena, paper configuration']
    assert list(next(iter(rows.values()))) == ['model', 'ListOps', 'Text', 'Retrieval', 'Image', 'Pathfinder', 'Avg']
    multi, single = rows['Hrrformer, multi-layer (ours)'], rows['Hrrformer, 1 layer (ours)']
    assert multi['ListOps'].startswith('38.50 / 39.90 (3 ep') and multi['Image'] == '-'
    assert multi['Text'] == '62.00 / 62.00 (1 ep)'
    assert single['Image'] == '46.75 / 46.75 (2 ep)' and single['ListOps'] == '-' and single['Avg'] == '-'
    assert rows['Hrrformer, multi-layer (paper)']['ListOps'] == '39.98'
    assert rows['Hrrformer, 1 layer (paper)']['Avg'] == '59.97'
    assert (w / 'listops_6' / 'curves.png').read_bytes()[:8] == PNG


def test_seeds_form_one_group_with_mean_and_sample_std(tmp_path):
    w = tmp_path / 'w'
    # test accuracy at the best validation epoch: 38, 40 and 42 -> mean 40, sample std 2 (population: 1.63)
    make_run(w / 'image_3', [(50.0, 38.0), (49.0, 99.0)], step=2)
    make_run(w / 'image_3_seed1', [(10.0, 11.0), (51.0, 40.0)], step=2, seed=1)
    make_run(w / 'image_3_seed2', [(52.0, 42.0), (52.0, 1.0)], step=2, seed=2)  # equal valid: the earlier epoch
    make_run(w / 'image_3_seed3', [(60.0, 70.0)], step=1, seed=3, lr=0.01)  # another learning rate: apart
    make_run(w / 'image_1', [(40.0, 41.0)], step=1, n_layer=1, attention='softmax')  # the Transformer row
    make_run(w / 'image_1_seed4', [(40.0, 43.0)], step=1, n_layer=1, seed=4, attention='softmax')
    sections = write_report(tmp_path)
    rows = sections['Long Range Arena, paper configuration']
    assert rows['Hrrformer, multi-layer (ours)']['Image'] == '40.00 ± 2.00 (3 seeds, 2 ep)'
    assert rows['Transformer, 1 layer (ours)']['Image'] == '42.00 ± 1.41 (2 seeds, 1 ep)'
    apart = next(rows for title, rows in sections.items() if title.startswith('Runs that differ'))
    assert apart['image_3_seed3']['differs from the paper in'] == 'lr=0.01 (paper: 0.001)'
    assert apart['image_3_seed3']['ours'] == '70.00 / 70.00 (1 ep)'


def test_a_reduced_run_is_shown_apart_with_what_differs(tmp_path):
    w = tmp_path / 'w'
    make_run(w / 'pathfinder_2', [(60.0, 61.0)], step=1, embed_size=16, train_examples=100)
    # the newest checkpoint by number (10, not '9'), not a half-written orbax folder, gives the settings
    write_meta(w / 'pathfinder_2', 9, {'epoch': 1, 'config': {'task': 'pathfinder', 'n_layer': 2}})
    write_meta(w / 'pathfinder_2', '11.orbax-checkpoint-tmp-1', {'epoch': 1, 'config': {'task': 'pathfinder'}})
    (w / 'pathfinder_2' / 'checkpoints' / '1').rename(w / 'pathfinder_2' / 'checkpoints' / '10')
    make_run(w / 'listops_3', [(30.0, 33.0)], step=1, n_layer=3)
    make_run(w / 'text_6', [(60.0, 62.0)])  # no checkpoint: its settings are not known
    make_run(w / 'ember_T1024_seed3', [(60.0, 62.0)])  # EMBER's workdir names: the length, then the seed
    make_run(w / 'retrieval_4', [(70.0, 71.0)], step=1, drop=('end_lr', 'label_smoothing', 'max_minutes'))
    sections = write_report(tmp_path)
    table = sections['Long Range Arena, paper configuration']['Hrrformer, multi-layer (ours)']
    assert (table['ListOps'], table['Text'], table['Pathfinder'], table['Retrieval']) == \
        ('-', '-', '-', '71.00 / 71.00 (1 ep)')  # an older checkpoint's missing fields are the paper's
    apart = next(rows for title, rows in sections.items() if title.startswith('Runs that differ'))
    assert set(apart) == {'pathfinder_2', 'listops_3', 'text_6', 'ember_T1024_seed3'}
    ember, _ = report.run_settings(w / 'ember_T1024_seed3')
    assert (ember['task'], ember['max_seq_len'], ember['seed'], ember['n_layer']) == ('ember', 1024, 3, 1)
    assert apart['pathfinder_2']['differs from the paper in'] == \
        'embed_size=16 (paper: 1024); train_examples=100 (paper: all)'
    assert apart['pathfinder_2']['ours'].startswith('61.00 / 61.00 (1 ep')
    assert apart['listops_3']['differs from the paper in'] == 'n_layer=3 (paper: 6)'
    assert apart['text_6']['differs from the paper in'].startswith('no checkpoint')


def test_curves_have_whole_epoch_ticks_and_a_loss_axis_from_zero(tmp_path):
    make_run(tmp_path / 'listops_6', [(30.0, 31.0), (40.0, 38.5), (35.0, 39.9)],
             losses=[0.69312, 0.69315, 0.69313], step=3)  # a flat loss: noise must not look like learning
    run, = report.collect([tmp_path / 'listops_6'])
    figure = report.plot_curves(run, tmp_path / 'curves.png')
    loss, accuracy = figure.axes
    for ax in (loss, accuracy):
        low, high = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if low <= t <= high]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    assert loss.get_ylim()[0] == 0 and loss.get_ylim()[1] >= 0.69315
    assert accuracy.get_ylim()[1] - accuracy.get_ylim()[0] >= 10
    assert [line.get_xdata()[0] for line in accuracy.lines if line.get_label() == 'best validation'] == [2]
    assert 'listops_6' in figure.texts[0].get_text()
    assert (tmp_path / 'curves.png').read_bytes()[:8] == PNG


def test_report_help_and_errors_are_one_line(tmp_path):
    script = str(ROOT / 'benchmarks' / 'report.py')
    shown = subprocess.run([sys.executable, script, '--help'], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0
    for option in ('--weights DIR', '--workdir RUN', '--output FILE'):
        assert option in shown.stdout
    assert shown.stdout.count('default') >= 3
    for argv, message in (([f'--weights={tmp_path}'], 'no run in'), (['--bogus=1'], 'unrecognized arguments'),
                          ([f'--workdir={tmp_path}'], 'has no history.csv')):
        failed = subprocess.run([sys.executable, script] + argv, capture_output=True, text=True, timeout=60)
        assert failed.returncode == 2 and message in failed.stderr and len(failed.stderr.strip().splitlines()) == 1, \
            failed.stderr


# ----------------------------------------------------------------------------- the weight maps

def random_split(n, seq_len, num_classes, seed):
    rng = np.random.default_rng(seed)
    return {'inputs': rng.integers(0, 256, (n, seq_len)).astype(np.int32),
            'targets': rng.integers(0, num_classes, n).astype(np.int32)}


@pytest.fixture(scope='module')
def pathfinder_run(tmp_path_factory):
    """A tiny trained Pathfinder run (block D, learned positions) on generated images."""
    import trainer
    from pathfinder.dataset import load_dataset
    from pathfinder.generate import write_dataset
    from pathfinder.hrrformer_mgpu import pathfinder32
    root = tmp_path_factory.mktemp('pathfinder')
    write_dataset(root / 'data', resolution=32, count=40, seed=0, workers=1, verbose=False)
    config = dataclasses.replace(pathfinder32, data_dir=str(root / 'data'), workdir=str(root / 'run'),
                                 n_layer=2, embed_size=16, heads=2, batch_size=2, epochs=1)
    trainer.run(config, load_dataset)
    return root / 'run'


@pytest.fixture(scope='module')
def image_run(tmp_path_factory):
    """A tiny trained Image run (block C, fixed sinusoid positions) on random pixels."""
    import trainer
    from image.hrrformer_mgpu import config as image
    workdir = tmp_path_factory.mktemp('image') / 'run'
    config = dataclasses.replace(image, workdir=str(workdir), n_layer=2, embed_size=16, heads=2, batch_size=2,
                                 epochs=1)
    trainer.run(config, lambda c: tuple(random_split(n, 1024, 10, n) for n in (16, 8, 8)))
    return workdir


def circular_convolution(x, y):
    """(..., H) x (..., H) -> (..., H): z_n = sum_m x_m y_(n-m mod H), summed out directly."""
    h = x.shape[-1]
    index = (np.arange(h)[:, None] - np.arange(h)[None, :]) % h           # [n, m] -> n - m mod H
    return np.einsum('...m,...nm->...n', x, y[..., index])


def sinusoid(length, features):
    """PE(p, 2i) = sin(p / 10000^(2i/E)), PE(p, 2i+1) = cos(p / 10000^(2i/E))."""
    angle = np.arange(length)[:, None] / 10000 ** (2 * (np.arange(features) // 2) / features)[None, :]
    return np.where(np.arange(features) % 2 == 0, np.sin(angle), np.cos(angle))


def hand_weights(config, params, ids):
    """Layer 0's HRR attention weights (N, h, T) worked out in numpy from the parameters: blocks C and D
    put no LayerNorm between the embedding and the first attention, and dropout is off in evaluation."""
    encoder = jax_to_numpy(params['encoder'])
    embedding = encoder['Embedding_0']
    t = ids.shape[1]
    positions = embedding['position']['embedding'][:t] if config.positions == 'learned' \
        else sinusoid(t, config.embed_size)
    x = embedding['token']['embedding'][ids] + positions                    # (N, T, E)
    attention = encoder['EncoderBlock_0']['SelfAttention_0']
    n, heads = len(ids), config.heads
    q, k, v = (np.einsum('nte,ef->ntf', x, attention[name]['kernel']).reshape(n, t, heads, -1).transpose(0, 2, 1, 3)
               for name in ('query', 'key', 'value'))                      # (N, h, T, H')
    beta = circular_convolution(k, v).sum(axis=2, keepdims=True)           # (N, h, 1, H')
    involution = np.concatenate([q[..., :1], q[..., :0:-1]], axis=-1)      # q_(-i mod H')
    vhat = circular_convolution(np.broadcast_to(beta, q.shape), involution)
    cosine = (v * vhat).sum(-1) / np.linalg.norm(v, axis=-1) / np.linalg.norm(vhat, axis=-1)
    weights = np.exp(cosine - cosine.max(-1, keepdims=True))
    return weights / weights.sum(-1, keepdims=True)                        # (N, h, T)


def jax_to_numpy(tree):
    import jax
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


@pytest.mark.parametrize('run_name', ['image_run', 'pathfinder_run'])
def test_weight_maps_are_the_attention_weights_worked_out_by_hand(run_name, request):
    run = visualize.restore_run(request.getfixturevalue(run_name))
    assert (run.config.n_layer, run.config.embed_size, run.config.heads, run.epoch) == (2, 16, 2, 1)
    ids = random_split(3, 1024, 2, seed=7)['inputs']
    maps = visualize.attention_maps(run.config, run.params, ids, layer=0)
    expected = hand_weights(run.config, run.params, ids)
    assert maps.shape == (3, 2, 32, 32)
    assert expected.max() / expected.min() > 1.5  # far from uniform: the comparison can tell maps apart
    np.testing.assert_allclose(maps.reshape(3, 2, 1024), expected, rtol=2e-3, atol=0)  # pixel (r, c) at r*32+c
    deeper = visualize.attention_maps(run.config, run.params, ids, layer=1)
    assert not np.allclose(deeper.reshape(3, 2, 1024), expected, rtol=2e-3, atol=0)


def test_report_reads_a_real_checkpoint(image_run):
    settings, note = report.run_settings(image_run)
    assert note is None and (settings['task'], settings['n_layer'], settings['embed_size']) == ('image', 2, 16)
    assert report.paper_differences(settings) == \
        ['n_layer=2 (paper: 3)', 'embed_size=16 (paper: 256)', 'heads=2 (paper: 4)']


def test_weight_maps_need_only_the_run_folder(pathfinder_run, tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'visualize.py'), f'--workdir={pathfinder_run}',
                           '--examples=2', f'--output={tmp_path / "maps.png"}'],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)  # from another folder
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / 'maps.png').read_bytes()[:8] == PNG
    assert 'run: Pathfinder, --layer=0 of 2 layers, 2 heads, E 16, epoch 1, seed 0; 2 examples x 2 heads' in done.stdout


def test_weight_map_options_and_errors(pathfinder_run, tmp_path, capsys):
    with pytest.raises(SystemExit) as shown:
        visualize.main(['--help'])
    help_text = capsys.readouterr().out
    assert shown.value.code == 0
    for option in ('--workdir RUN', '--examples N', '--layer L', '--output FILE'):
        assert option in help_text
    assert 'default: 4' in help_text and 'default: 0' in help_text
    for argv, message in (([f'--workdir={pathfinder_run}', '--layer=2'], 'the run has 2 layer(s)'),
                          ([f'--workdir={tmp_path}'], 'no checkpoint in')):
        with pytest.raises(visualize.UserError, match=re.escape(message)):
            visualize.main(argv)
    for argv, message in (([], 'required: --workdir'), ([f'--workdir={tmp_path}', '--examples=0'], '>= 1')):
        with pytest.raises(SystemExit) as failed:
            visualize.main(argv)
        stderr = capsys.readouterr().err
        assert failed.value.code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1, stderr


def test_weight_map_figure_has_colour_bars_and_names_its_run(tmp_path):
    maps = np.random.default_rng(0).dirichlet(np.ones(16), size=(2, 3)).reshape(2, 3, 4, 4)
    figure = visualize.draw(np.zeros((2, 4, 4)), maps, [0, 1], tmp_path / 'maps.png', 'pathfinder_2: layer 0')
    bars = [ax for ax in figure.axes if ax.get_label() == '<colorbar>']
    assert len(bars) == 2 * 3  # one per map: 2 examples x 3 heads
    assert figure.get_suptitle() == 'pathfinder_2: layer 0'
    assert (tmp_path / 'maps.png').read_bytes()[:8] == PNG
