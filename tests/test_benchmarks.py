"""The reproduction report and the weight maps (the speed and memory benchmark: test_speed_memory.py)."""
import dataclasses
import sys

import numpy as np
import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / 'benchmarks'))
import report  # noqa: E402
import visualize  # noqa: E402

PNG = b'\x89PNG\r\n\x1a\n'


def write_history(folder, accuracies):
    """accuracies: [(valid, test)] per epoch."""
    folder.mkdir(parents=True)
    from utils import append_history
    for epoch, (valid, test) in enumerate(accuracies, start=1):
        append_history(folder / 'history.csv', {'epoch': epoch, 'train_loss': 2.0 / epoch, 'train_acc': 30 + epoch,
                                                'valid_acc': valid, 'test_acc': test, 'seconds': 1.0,
                                                'examples_per_second': 10.0, 'learning_rate': 1e-3,
                                                'skipped_batches': 0, 'peak_memory_mb': 100.0})


def test_report_puts_the_right_numbers_in_the_right_cells(tmp_path, capsys):
    write_history(tmp_path / 'listops_6', [(30.0, 31.0), (40.0, 38.5), (35.0, 39.9)])  # best valid: epoch 2
    write_history(tmp_path / 'image_1', [(45.0, 44.25), (47.5, 46.75)])
    report.main([f'--weights={tmp_path}', f'--output={tmp_path}/report.md'])
    lines = (tmp_path / 'report.md').read_text().splitlines()
    header = [cell.strip() for cell in lines[2].split('|')[1:-1]]
    rows = {cells[0]: dict(zip(header, cells)) for cells in
            ([c.strip() for c in line.split('|')[1:-1]] for line in lines[4:])}
    assert header == ['model', 'ListOps', 'Text', 'Retrieval', 'Image', 'Pathfinder', 'Avg']
    multi, single = rows['Hrrformer, multi-layer (ours)'], rows['Hrrformer, 1 layer (ours)']
    assert multi['ListOps'].startswith('38.50 / 39.90 (3 ep') and multi['Image'] == '-'
    assert single['Image'] == '46.75 / 46.75 (2 ep)' and single['ListOps'] == '-' and single['Avg'] == '-'
    assert rows['Hrrformer, multi-layer (paper)']['ListOps'] == '39.98'
    assert rows['Hrrformer, 1 layer (paper)']['Avg'] == '59.97'
    assert (tmp_path / 'listops_6' / 'curves.png').read_bytes()[:8] == PNG


def test_weight_map_of_a_tiny_checkpoint(tmp_path):
    import trainer
    from pathfinder.dataset import load_dataset
    from pathfinder.generate import write_dataset
    from pathfinder.hrrformer_mgpu import pathfinder32
    write_dataset(tmp_path / 'data', resolution=32, count=40, seed=0, workers=1, verbose=False)
    config = dataclasses.replace(pathfinder32, data_dir=str(tmp_path / 'data'), workdir=str(tmp_path / 'w'),
                                 n_layer=2, embed_size=16, heads=2, batch_size=2, epochs=1)
    trainer.run(config, load_dataset)
    restored, params, _ = visualize.restore_run(tmp_path / 'w')
    assert (restored.n_layer, restored.embed_size, restored.resolution) == (2, 16, 32)
    test = load_dataset(restored)[2]
    maps = visualize.attention_maps(restored, params, test['inputs'][:3].astype(np.int32), layer=1)
    assert maps.shape == (3, 2, 32, 32)
    np.testing.assert_allclose(maps.sum(axis=(2, 3)), 1.0, rtol=1e-4)  # a softmax over the 1024 pixels
    visualize.draw(test['inputs'][:3].reshape(-1, 32, 32), maps, test['targets'][:3], tmp_path / 'maps.png')
    assert (tmp_path / 'maps.png').read_bytes()[:8] == PNG
    with pytest.raises(Exception, match='no checkpoint'):
        visualize.restore_run(tmp_path / 'nothing')
