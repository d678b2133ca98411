"""The Pathfinder loader on a tiny tree in the LRA layout, made here with Pillow."""
import dataclasses
import os

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


def difficulty(root):
    return root / 'pathfinder32' / 'curv_contour_length_14'


def everything(splits):
    """The three splits together, sorted by the (folder, index) code in each image's first pixel."""
    inputs = np.concatenate([s['inputs'] for s in splits])
    targets = np.concatenate([s['targets'] for s in splits])
    order = np.argsort(inputs[:, 0], kind='stable')
    return inputs[order], targets[order]


@pytest.mark.parametrize('label', ['5', '-1', '2'])
def test_a_label_other_than_0_or_1_is_refused(tmp_path, label):
    make_tree(tmp_path)
    path = difficulty(tmp_path) / 'metadata' / '1.npy'
    lines = path.read_text().splitlines()
    fields = lines[2].split()
    fields[3] = label
    lines[2] = ' '.join(fields)
    path.write_text('\n'.join(lines) + '\n')
    with pytest.raises(UserError, match=rf'1.npy:3: label {label} is not 0 or 1'):
        dataset.load_dataset(config(tmp_path))


def test_repeated_metadata_lines_are_skipped_and_counted(tmp_path, capsys):
    expected = make_tree(tmp_path)
    path = difficulty(tmp_path) / 'metadata' / '0.npy'
    lines = path.read_text().splitlines()
    path.write_text('\n'.join(lines + lines[:2] + [lines[4]]) + '\n')  # three lines again
    splits = dataset.load_dataset(config(tmp_path))
    assert 'skipped 3 repeated line(s)' in capsys.readouterr().out
    inputs, targets = everything(splits)
    assert sorted(zip(inputs[:, 0].tolist(), targets.tolist())) == sorted(expected)  # each image once
    fields = lines[0].split()
    fields[3] = str(1 - int(fields[3]))
    path.write_text('\n'.join(lines + [' '.join(fields)]) + '\n')
    with pytest.raises(UserError, match=r'0.npy:7: imgs/0/sample_0.png is listed again with label 1, but with '
                                        r'label 0 at \S*0.npy:1'):
        dataset.load_dataset(config(tmp_path))


def test_16_bit_grayscale_is_scaled_as_tensorflow_does(tmp_path):
    make_tree(tmp_path)
    values = np.random.default_rng(0).integers(0, 65536, size=(32, 32), dtype=np.uint16)
    values[0, 0], values[0, 1] = 2 * 256 + 255, 1 * 256 + 7   # its code (folder 0, image 2) and label 1 >> 8
    path = difficulty(tmp_path) / 'imgs' / '0' / 'sample_2.png'
    Image.fromarray(values).save(path)                       # uint16: mode 'I;16'
    with Image.open(path) as image:
        assert image.mode == 'I;16'                          # Pillow reads it as 16 bits
    inputs, targets = everything(dataset.load_dataset(config(tmp_path)))
    row = inputs[inputs[:, 0] == 2]
    assert len(row) == 1
    np.testing.assert_array_equal(row[0], (values >> 8).reshape(-1))  # libpng's strip-16 (not a clip to 0 or 255)
    assert len(np.unique(row[0])) > 200


@pytest.mark.parametrize('mode', ['RGB', 'P'])
def test_colour_images_are_refused(tmp_path, mode):
    make_tree(tmp_path)
    path = difficulty(tmp_path) / 'imgs' / '1' / 'sample_1.png'
    Image.new(mode, (32, 32)).save(path)
    with pytest.raises(UserError, match=rf'sample_1.png is a {mode} image: only grayscale PNGs'):
        dataset.load_dataset(config(tmp_path))


@pytest.mark.parametrize('damage', ['truncated', 'garbage', 'bad checksum'])
def test_a_damaged_image_is_one_line_naming_it(tmp_path, damage):
    make_tree(tmp_path)
    path = difficulty(tmp_path) / 'imgs' / '1' / 'sample_4.png'
    data = path.read_bytes()
    broken = {'truncated': data[:len(data) // 2], 'garbage': b'not a png at all',
              'bad checksum': data[:40] + bytes([data[40] ^ 0xFF]) + data[41:]}[damage]
    path.write_bytes(broken)
    with pytest.raises(UserError, match=r'cannot read the image \S*imgs/1/sample_4.png \(listed at \S*1.npy:5\)'):
        dataset.load_dataset(config(tmp_path))


@pytest.mark.parametrize('data, problem', [
    (b'\x93NUMPY\x01\x00v\x00{"descr": "<U64"', r'1.npy is a binary numpy file, not LRA\'s text metadata'),
    (b'imgs/1 sample_0.png 0 1 1.0 14 4 2 0.5 1 1\n\xff\xd8\xff\xe0 binary', r'1.npy:2: binary data, not text'),
])
def test_binary_metadata_is_one_line(tmp_path, data, problem):
    make_tree(tmp_path)
    (difficulty(tmp_path) / 'metadata' / '1.npy').write_bytes(data)
    with pytest.raises(UserError, match=problem):
        dataset.load_dataset(config(tmp_path))


def test_the_cache_follows_every_image_and_label(tmp_path, capsys):
    make_tree(tmp_path)
    dataset.load_dataset(config(tmp_path))
    assert 'decoding the images' in capsys.readouterr().out
    dataset.load_dataset(config(tmp_path))
    assert 'decoding the images' not in capsys.readouterr().out  # used as it is

    # an image replaced by another whose older mtime comes along (cp -p, rsync -t)
    path = difficulty(tmp_path) / 'imgs' / '0' / 'sample_1.png'
    hour_ago = path.stat().st_mtime_ns - 3_600 * 10 ** 9
    pixels = np.asarray(Image.open(path)).copy()
    pixels[5, 5] = 77
    Image.fromarray(pixels, mode='L').save(path)
    os.utime(path, ns=(hour_ago, hour_ago))
    inputs, _ = everything(dataset.load_dataset(config(tmp_path)))
    assert inputs[inputs[:, 0] == 1][0, 5 * 32 + 5] == 77

    # a label corrected in the metadata, of the same size, with an older mtime
    metadata = difficulty(tmp_path) / 'metadata' / '1.npy'
    hour_ago = metadata.stat().st_mtime_ns - 3_600 * 10 ** 9
    metadata.write_text(metadata.read_text().replace('imgs/1 sample_0.png 0 1', 'imgs/1 sample_0.png 0 0'))
    os.utime(metadata, ns=(hour_ago, hour_ago))
    inputs, targets = everything(dataset.load_dataset(config(tmp_path)))
    assert targets[inputs[:, 0] == 10].tolist() == [0]
