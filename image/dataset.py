"""Image (LRA): CIFAR-10 in grayscale, each image read as a sequence of 1024 pixel values.

tensorflow-datasets `cifar10`: train = the first 90% of `train` (45,000), validation = the last 10%
(5,000), test = `test` (10,000). Grayscale exactly as `tf.image.rgb_to_grayscale` computes it on
uint8 images (float32 steps emulated in numpy). Tokens are the pixel values (vocabulary 256, no
padding, so no mask). Prepared once through tensorflow-datasets into data_dir, then cached as .npy.
"""
from pathlib import Path

import numpy as np

from utils import ROOT, UserError, cached_arrays, tfds_batches

VOCAB_SIZE = 256
NUM_CLASSES = 10
DEFAULT_DATA_DIR = ROOT / 'data' / 'tensorflow_datasets'
CACHE_VERSION = 1  # raise when read_split changes what it caches
SPLITS = {'train': 'train[:90%]', 'valid': 'train[90%:]', 'test': 'test'}
_RGB_WEIGHTS = np.array([0.2989, 0.5870, 0.1140], dtype=np.float32)  # TensorFlow's, as float32


def to_grayscale(images):
    """uint8 (..., H, W, 3) -> uint8 (..., H, W), bit for bit TensorFlow's rgb_to_grayscale: scale to
    [0, 1] by float32(1/255), weigh the channels in float32 in the order R, G, B, then truncate y * 255.5."""
    x = images.astype(np.float32) * np.float32(1 / 255)
    y = x[..., 0] * _RGB_WEIGHTS[0] + x[..., 1] * _RGB_WEIGHTS[1] + x[..., 2] * _RGB_WEIGHTS[2]
    return (y * np.float32(255.5)).astype(np.uint8)


def read_split(split, data_dir):
    """One split -> {'inputs' (N, 1024) uint8 gray pixels, 'targets' (N,) int32}."""
    inputs, targets = [], []
    for images, labels in tfds_batches('cifar10', split, data_dir):
        inputs.append(to_grayscale(images).reshape(len(images), -1))
        targets.append(labels.astype(np.int32))
    return {'inputs': np.concatenate(inputs), 'targets': np.concatenate(targets)}


def load_dataset(config):
    """(train, valid, test) dicts: 'inputs' (N, 1024) uint8, 'targets' (N,) int32."""
    data_dir = DEFAULT_DATA_DIR if config.data_dir is None else Path(config.data_dir).expanduser().resolve()
    if config.max_seq_len != 1024:
        raise UserError(f'CIFAR-10 images are 1024 pixels long: --max_seq_len must be 1024, not {config.max_seq_len}')

    def load(name):
        return cached_arrays(data_dir / 'npy' / f'cifar10_gray.{name}', ('inputs', 'targets'),
                             lambda: read_split(SPLITS[name], data_dir),
                             f'reading cifar10 {SPLITS[name]} from tensorflow-datasets in {data_dir}',
                             settings={'data': 'cifar10', 'split': SPLITS[name], 'loader': CACHE_VERSION})
    return load('train'), load('valid'), load('test')
