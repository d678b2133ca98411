"""Text (IMDB bytes) and Image (CIFAR-10 grayscale) loaders, offline with tfds.testing.mock_data."""
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from conftest import ROOT
from image.dataset import to_grayscale
from text.dataset import encode_bytes
from trainer import Config


def test_byte_ids_of_a_known_string():
    text = 'Café <br />ok'
    expected = [b + 1 for b in text.encode('utf-8')]
    assert expected[3:5] == [0xC3 + 1, 0xA9 + 1]  # é is two bytes
    ids = encode_bytes([text, text.encode('utf-8'), ''], max_seq_len=20)
    assert ids.dtype == np.int32 and ids.shape == (3, 20)
    assert ids[0].tolist() == expected + [0] * (20 - len(expected))
    assert ids[1].tolist() == ids[0].tolist()
    assert not ids[2].any()
    assert encode_bytes([text], max_seq_len=4).tolist() == [expected[:4]]  # truncated to the first bytes
    assert encode_bytes([bytes([0, 255])], 2).tolist() == [[1, 256]]      # the id range is 1..256


def test_byte_ids_equal_the_lra_encoder():
    encoder = tfds.deprecated.text.ByteTextEncoder()  # what LRA's input pipeline uses
    rng = np.random.default_rng(0)
    texts = ['Café <br />ok', 'naïve 日本語 😀', ''.join(chr(c) for c in rng.integers(32, 0x2FFF, 300))]
    for text in texts:
        ids = encoder.encode(text)
        assert encode_bytes([text], len(ids) + 3)[0].tolist() == ids + [0, 0, 0]
    assert encoder.vocab_size == 257


def test_grayscale_equals_tensorflow_on_every_color():
    values = np.arange(256, dtype=np.uint8)
    r, g, b = np.meshgrid(values, values, values, indexing='ij')
    images = np.stack([r, g, b], axis=-1).reshape(-1, 32, 32, 3)        # all 2^24 colors, as images
    ours = to_grayscale(images)
    theirs = tf.image.rgb_to_grayscale(images).numpy()[..., 0]
    assert ours.shape == (16384, 32, 32) and ours.dtype == np.uint8
    assert np.array_equal(ours, theirs)


def test_grayscale_on_random_pixels_of_any_batch_shape():
    pixels = np.random.default_rng(0).integers(0, 256, size=(2, 500, 32, 32, 3), dtype=np.uint8)  # 1M pixels
    assert np.array_equal(to_grayscale(pixels), tf.image.rgb_to_grayscale(pixels).numpy()[..., 0])


def mock_load(module, data_dir, max_seq_len, num_examples=20):
    with tfds.testing.mock_data(num_examples=num_examples):
        return module.load_dataset(Config(data_dir=str(data_dir), max_seq_len=max_seq_len))


def read_mock(name, split, num_examples=20):
    """What tensorflow-datasets itself gives for a mocked split: [(feature, label)] as numpy."""
    with tfds.testing.mock_data(num_examples=num_examples):
        return list(tfds.as_numpy(tfds.load(name, split=split, as_supervised=True)))


def test_text_loader_equals_an_independent_reading(tmp_path):
    import text.dataset as text
    train, valid, test = mock_load(text, tmp_path, 12)
    for loaded, split in ((train, 'train'), (test, 'test')):
        examples = read_mock('imdb_reviews', split)
        ids = np.zeros((len(examples), 12), np.int64)
        for row, (review, _) in enumerate(examples):
            first = list(review)[:12]                       # bytes of the review, then byte + 1
            ids[row, :len(first)] = [byte + 1 for byte in first]
        labels = [int(label) for _, label in examples]
        assert 0 < sum(labels) < len(labels)                # both classes: a lost label would show
        assert loaded['targets'].tolist() == labels
        np.testing.assert_array_equal(loaded['inputs'], ids)
    assert any(len(review) > 12 for review, _ in read_mock('imdb_reviews', 'train'))  # truncation is exercised


def test_image_loader_equals_an_independent_reading(tmp_path):
    import image.dataset as image
    loaded = dict(zip(('train', 'valid', 'test'), mock_load(image, tmp_path, 1024)))
    for name, split in (('train', 'train[:90%]'), ('valid', 'train[90%:]'), ('test', 'test')):
        examples = read_mock('cifar10', split)
        gray = tf.image.rgb_to_grayscale(np.stack([img for img, _ in examples])).numpy()[..., 0]  # (N, 32, 32)
        rows = [[int(g[r, c]) for r in range(32) for c in range(32)] for g in gray]  # row by row, left to right
        assert loaded[name]['inputs'].tolist() == rows
        assert loaded[name]['targets'].tolist() == [int(label) for _, label in examples]
        assert len(set(loaded[name]['targets'].tolist())) > 2


@pytest.mark.parametrize('task', ['text', 'image'])
def test_a_cache_of_other_settings_is_built_again(tmp_path, monkeypatch, capsys, task):
    import importlib
    module = importlib.import_module(f'{task}.dataset')
    max_seq_len = 1024 if task == 'image' else 64
    mock_load(module, tmp_path, max_seq_len)
    assert 'reading' in capsys.readouterr().out
    mock_load(module, tmp_path, max_seq_len)
    assert 'reading' not in capsys.readouterr().out        # the cache serves the same settings
    monkeypatch.setattr(module, 'CACHE_VERSION', module.CACHE_VERSION + 1)  # what the loader caches changed
    mock_load(module, tmp_path, max_seq_len)
    assert 'reading' in capsys.readouterr().out


def test_text_loader_shapes_and_cache(tmp_path):
    import text.dataset as text
    train, valid, test = mock_load(text, tmp_path, 64)
    for split in (train, valid, test):
        assert split['inputs'].shape == (20, 64) and split['targets'].shape == (20,)
        assert split['inputs'].max() <= 256 and split['inputs'].min() >= 0
        assert set(np.unique(split['targets'])) <= {0, 1}
    assert valid is test  # LRA validates on the test split
    assert len(list((tmp_path / 'npy').glob('imdb_reviews.*.T64.*.npy'))) == 4


def test_image_loader_shapes_and_cache(tmp_path, monkeypatch):
    import image.dataset as image
    requested = []

    def recording(name, split, data_dir):  # mock_data ignores split slicing: check what is asked for
        requested.append((name, split))
        return tfds_batches(name, split, data_dir)
    from utils import tfds_batches
    monkeypatch.setattr(image, 'tfds_batches', recording)
    train, valid, test = mock_load(image, tmp_path, 1024)
    assert requested == [('cifar10', 'train[:90%]'), ('cifar10', 'train[90%:]'), ('cifar10', 'test')]
    for split in (train, valid, test):
        assert split['inputs'].shape[1:] == (1024,) and split['inputs'].dtype == np.uint8
        assert set(np.unique(split['targets'])) <= set(range(10))
    assert len(list((tmp_path / 'npy').glob('cifar10_gray.*.npy'))) == 6
    assert len(list((tmp_path / 'npy').glob('cifar10_gray.*.key.json'))) == 3


@pytest.mark.parametrize('task, max_seq_len', [('text', 64), ('image', 1024)])
def test_script_trains_from_the_cache_without_tensorflow(task, max_seq_len, tmp_path):
    import importlib
    mock_load(importlib.import_module(f'{task}.dataset'), tmp_path / 'data', max_seq_len, num_examples=12)
    args = [f'--data_dir={tmp_path}/data', f'--workdir={tmp_path}/w', '--n_layer=1', '--embed_size=16',
            '--heads=2', f'--max_seq_len={max_seq_len}', '--epochs=1', '--batch_size=2', '--train_examples=8']
    code = ('import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name="__main__"); '
            'assert "tensorflow" not in sys.modules, "TensorFlow was imported"')
    result = subprocess.run([sys.executable, '-c', code, str(ROOT / task / 'hrrformer_mgpu.py'), *args],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'epoch 1/1: train loss' in result.stdout and 'reading' not in result.stdout


def test_without_network_or_cache_one_clear_line(tmp_path):
    (tmp_path / 'data').mkdir()
    (tmp_path / 'data' / 'mine').mkdir()                 # a folder the user had: kept, though empty
    result = subprocess.run([sys.executable, str(ROOT / 'image' / 'hrrformer_mgpu.py'), f'--data_dir={tmp_path}/data',
                             f'--workdir={tmp_path}/w'], capture_output=True, text=True, timeout=600,
                            env={**os.environ, 'HTTPS_PROXY': 'http://127.0.0.1:9', 'HTTP_PROXY':
                                 'http://127.0.0.1:9'})  # a dead proxy: no network, whatever the machine has
    assert result.returncode == 2 and 'Traceback' not in result.stderr
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1, result.stderr                # no progress bars, no warnings: the one line
    assert errors[0].startswith('error: cannot get cifar10') and 'connect to the internet' in errors[0]
    said = result.stdout.strip().splitlines()               # only what the loader itself says it does
    assert len(said) == 1 and said[0].startswith('reading cifar10 train[:90%] from tensorflow-datasets'), said
    left = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / 'data').rglob('*'))
    assert left == ['data/mine'], left                     # the empty download folders are gone
