"""The Pathfinder loader on a tiny tree in the LRA layout, made here with Pillow."""
import dataclasses

import numpy as np
import pytest
from PIL import Image

from pathfinder import dataset
from pathfinder.hrrformer_mgpu import config_for, pathfinder32, pathx
from utils import UserError


def make_tree(root, resolution=32, folders=((0, 6), (1, 5)), empty=((0, 3),)):
    """pathfinder<res>/curv_contour_length_14 with images whose top-left pixel encodes (folder, index)."""
    directory = root / f'pathfinder{resolution}' / 'curv_contour_length_14'
    expected = []
    for k, count in folders:
        (directory / 'imgs' / str(k)).mkdir(parents=True)
        (directory / 'metadata').mkdir(exist_ok=True)
        lines = []
        for i in range(count):
            path = directory / 'imgs' / str(k) / f'sample_{i}.png'
            label = (i + k) % 2
            lines.append(f'imgs/{k} sample_{i}.png {i} {label} 1.0 14 4 2 0.5 1 1')
            if (k, i) in empty:
                path.write_bytes(b'')  # as pathfinder32/curv_baseline/imgs/0/sample_172.png in LRA
                continue
            pixels = np.zeros((resolution, resolution), np.uint8)
            pixels[0, 0], pixels[0, 1], pixels[-1, -1] = 10 * k + i, label, 255
            Image.fromarray(pixels, mode='L').save(path)
            expected.append((10 * k + i, label))
        (directory / 'metadata' / f'{k}.npy').write_text('\n'.join(lines) + '\n')
    return expected


def config(root, **changes):
    return dataclasses.replace(pathfinder32, data_dir=str(root), **changes)


def test_reads_the_lra_layout_skipping_empty_images(tmp_path, capsys):
    expected = make_tree(tmp_path)
    train, valid, test = dataset.load_dataset(config(tmp_path))
    assert 'skipped 1 empty or missing image(s) of the 11 listed' in capsys.readouterr().out
    assert [len(s['targets']) for s in (train, valid, test)] == [8, 1, 1]  # 80 / 10 / 10 of 10 images
    everything = {key: np.concatenate([s[key] for s in (train, valid, test)]) for key in ('inputs', 'targets')}
    assert everything['inputs'].shape == (10, 1024) and everything['inputs'].dtype == np.uint8
    found = sorted(zip(everything['inputs'][:, 0].tolist(), everything['targets'].tolist()))
    assert found == sorted(expected)                               # every image once, with its own label
    assert (everything['inputs'][:, 1] == everything['targets']).all()
    assert (everything['inputs'][:, -1] == 255).all()              # row-major flattening
    again = dataset.load_dataset(config(tmp_path))                 # the split is fixed
    np.testing.assert_array_equal(again[2]['inputs'], test['inputs'])
    assert len(list(tmp_path.rglob('images.*.npy'))) == 2


def test_missing_difficulty_directory_is_one_clear_error(tmp_path):
    make_tree(tmp_path)
    with pytest.raises(UserError, match='curv_baseline has no metadata folder'):
        dataset.load_dataset(config(tmp_path, difficulty='easy'))
    with pytest.raises(UserError, match='--difficulty must be one of easy, intermediate, hard'):
        dataset.load_dataset(config(tmp_path, difficulty='medium'))


def test_wrong_sizes_are_refused(tmp_path):
    make_tree(tmp_path, resolution=16)
    with pytest.raises(UserError, match='--max_seq_len must be 256'):
        dataset.load_dataset(config(tmp_path, resolution=16))
    with pytest.raises(UserError, match='is 16x16 pixels, not 32x32'):
        (tmp_path / 'pathfinder32').symlink_to(tmp_path / 'pathfinder16')
        dataset.load_dataset(config(tmp_path))


def test_malformed_metadata_names_the_line(tmp_path):
    make_tree(tmp_path)
    (tmp_path / 'pathfinder32' / 'curv_contour_length_14' / 'metadata' / '1.npy').write_text('imgs/1 sample_0.png\n')
    with pytest.raises(UserError, match='1.npy:1: malformed metadata line'):
        dataset.load_dataset(config(tmp_path))


def test_resolution_128_selects_path_x():
    assert config_for(['--resolution=128', '--epochs=1']) is pathx
    assert config_for(['--epochs=1']) is pathfinder32


def test_script_trains_on_generated_images(tmp_path):
    import subprocess
    import sys
    from conftest import ROOT
    from pathfinder.generate import write_dataset
    write_dataset(tmp_path / 'data', resolution=32, count=40, seed=0, workers=1, verbose=False)
    result = subprocess.run([sys.executable, str(ROOT / 'pathfinder' / 'hrrformer_mgpu.py'),
                             f'--data_dir={tmp_path}/data', f'--workdir={tmp_path}/w', '--n_layer=1',
                             '--embed_size=16', '--heads=2', '--batch_size=2', '--epochs=1'],
                            cwd=ROOT / 'pathfinder', capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert '32 train / 4 valid / 4 test examples' in result.stdout and 'epoch 1/1: train loss' in result.stdout


def test_without_lra_data_the_images_are_generated_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(dataset, 'LRA_DIR', tmp_path / 'lra_release' / 'lra_release')
    monkeypatch.setattr(dataset, 'GENERATED_DIR', tmp_path / 'data' / 'pathfinder')
    small = dataclasses.replace(pathfinder32, generate_count=30)
    train, valid, test = dataset.load_dataset(small)
    assert 'generating 30 images of 32x32 (hard)' in capsys.readouterr().out
    assert sum(len(s['targets']) for s in (train, valid, test)) == 30
    assert 0.3 < np.mean(np.concatenate([s['targets'] for s in (train, valid, test)])) < 0.7
    dataset.load_dataset(small)
    assert 'generating' not in capsys.readouterr().out  # made once
