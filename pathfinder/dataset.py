"""Pathfinder (LRA): are the two markers on the ends of one dashed path? Images read pixel by pixel.

The LRA layout: <data_dir>/pathfinder<res>/<difficulty dir>/imgs/<k>/sample_<i>.png with text
metadata files <difficulty dir>/metadata/<k>.npy (one line per image: path fields, index, label, ...).
Difficulties: easy = curv_baseline, intermediate = curv_contour_length_9, hard =
curv_contour_length_14 (LRA uses hard). Empty images are skipped, as LRA does. A seeded 80/10/10
split; tokens are the pixel values (vocabulary 256, no mask). Decoded once, cached as .npy.
Without data_dir and without the LRA release, a generated set is made once (pathfinder/generate.py).
"""
from pathlib import Path

import numpy as np

from pathfinder.generate import DIFFICULTY_DIRS  # the one place for LRA's folder names
from utils import ROOT, UserError, cached_arrays

VOCAB_SIZE = 256
NUM_CLASSES = 2
LRA_DIR = ROOT / 'lra_release' / 'lra_release'
GENERATED_DIR = ROOT / 'data' / 'pathfinder'
SPLIT_SEED = 0  # the split is fixed, whatever the training seed


def difficulty_dir(data_dir, resolution, difficulty):
    if difficulty not in DIFFICULTY_DIRS:
        raise UserError(f'--difficulty must be one of {", ".join(DIFFICULTY_DIRS)}, not {difficulty!r}')
    return Path(data_dir) / f'pathfinder{resolution}' / DIFFICULTY_DIRS[difficulty]


def read_metadata(directory):
    """[(image path, label)] listed by every metadata/<k>.npy text file, in folder order."""
    files = sorted((directory / 'metadata').glob('*.npy'),
                   key=lambda p: (0, int(p.stem), '') if p.stem.isdigit() else (1, 0, p.stem))  # 0, 1, ..., 10
    listed = []
    for file in files:
        for number, line in enumerate(file.read_text().splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 4 or not fields[3].lstrip('-').isdigit():
                raise UserError(f'{file}:{number}: malformed metadata line: expected '
                                f'"imgs/<k> sample_<i>.png <i> <label> ...", found {line[:60]!r}')
            listed.append((directory / fields[0] / fields[1], int(fields[3])))
    return listed


def read_images(directory, resolution):
    """Every listed, non-empty image -> {'inputs' (N, res*res) uint8, 'targets' (N,) int32}."""
    from PIL import Image  # only when the cache is built
    listed = read_metadata(directory)
    inputs, targets, skipped = [], [], 0
    for path, label in listed:
        if not path.is_file() or path.stat().st_size == 0:
            skipped += 1  # LRA filters out empty images; a missing one is as unusable
            continue
        with Image.open(path) as image:
            pixels = np.asarray(image if image.mode == 'L' else image.convert('L'))
        if pixels.shape != (resolution, resolution):
            raise UserError(f'{path} is {pixels.shape[1]}x{pixels.shape[0]} pixels, not {resolution}x{resolution}')
        inputs.append(pixels.reshape(-1))
        targets.append(label)
    if skipped:
        print(f'skipped {skipped} empty or missing image(s) of the {len(listed)} listed in {directory / "metadata"}')
    if not targets:
        raise UserError(f'no readable images are listed in {directory / "metadata"}')
    return {'inputs': np.stack(inputs), 'targets': np.asarray(targets, np.int32)}


def split(arrays):
    """A seeded 80/10/10 split into train, valid and test."""
    n = len(arrays['targets'])
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    cuts = [0, int(0.8 * n), int(0.9 * n), n]
    return tuple({key: value[np.sort(order[a:b])] for key, value in arrays.items()} for a, b in zip(cuts, cuts[1:]))


def generated_dir(config):
    """The generated set, made (or completed) once when it has fewer than generate_count images."""
    directory = difficulty_dir(GENERATED_DIR, config.resolution, config.difficulty)
    have = len(read_metadata(directory)) if (directory / 'metadata').is_dir() else 0
    if have < config.generate_count:
        from pathfinder.generate import write_dataset
        print(f'no LRA Pathfinder data in {LRA_DIR}: generating {config.generate_count} images of '
              f'{config.resolution}x{config.resolution} ({config.difficulty}) once into {GENERATED_DIR} ...', flush=True)
        write_dataset(GENERATED_DIR, resolution=config.resolution, difficulty=config.difficulty,
                      count=config.generate_count, seed=0)
    return directory


def load_dataset(config):
    """(train, valid, test) dicts: 'inputs' (N, resolution**2) uint8 pixels, 'targets' (N,) int32."""
    if config.max_seq_len != config.resolution ** 2:
        raise UserError(f'{config.resolution}x{config.resolution} images are {config.resolution ** 2} tokens: '
                        f'--max_seq_len must be {config.resolution ** 2}, not {config.max_seq_len}')
    if config.data_dir is not None:
        directory = difficulty_dir(Path(config.data_dir).expanduser().resolve(), config.resolution, config.difficulty)
    elif difficulty_dir(LRA_DIR, config.resolution, config.difficulty).is_dir():
        directory = difficulty_dir(LRA_DIR, config.resolution, config.difficulty)
    else:
        directory = generated_dir(config)
    if not (directory / 'metadata').is_dir():
        raise UserError(f'{directory} has no metadata folder: point --data_dir at the folder holding '
                        f'pathfinder{config.resolution}/ (lra_release/lra_release in the LRA release), '
                        f'or leave it out to generate the data')
    metadata = list((directory / 'metadata').glob('*.npy'))
    newest = max(path.stat().st_mtime for path in metadata) if metadata else 0
    files = {key: directory / f'images.{key}.npy' for key in ('inputs', 'targets')}
    arrays = cached_arrays(files, lambda: read_images(directory, config.resolution), f'decoding the images of {directory}',
                           fresh=lambda cache: cache.stat().st_mtime >= newest)
    return split(arrays)
