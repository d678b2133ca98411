"""Pathfinder (LRA): are the two markers on the ends of one dashed path? Images read pixel by pixel.

The LRA layout: <data_dir>/pathfinder<res>/<difficulty dir>/imgs/<k>/sample_<i>.png with text
metadata files <difficulty dir>/metadata/<k>.npy (one line per image: path fields, index, label, ...).
Difficulties: easy = curv_baseline, intermediate = curv_contour_length_9, hard =
curv_contour_length_14 (LRA uses hard). Empty images are skipped, as LRA does, and so are repeated
metadata lines. A seeded 80/10/10 split; tokens are the pixel values (vocabulary 256, no mask).
Decoded once, cached as .npy (rebuilt when a metadata file or an image changes).
Without data_dir and without the LRA release, a generated set is made once (pathfinder/generate.py).
"""
import os
from pathlib import Path

import numpy as np

from pathfinder.generate import DIFFICULTY_DIRS  # the one place for LRA's folder names
from utils import ROOT, UserError, cached_arrays

VOCAB_SIZE = 256
NUM_CLASSES = 2
LRA_DIR = ROOT / 'lra_release' / 'lra_release'
GENERATED_DIR = ROOT / 'data' / 'pathfinder'
SPLIT_SEED = 0  # the split is fixed, whatever the training seed
CACHE_VERSION = 1  # raise when read_images changes what it caches


def difficulty_dir(data_dir, resolution, difficulty):
    if difficulty not in DIFFICULTY_DIRS:
        raise UserError(f'--difficulty must be one of {", ".join(DIFFICULTY_DIRS)}, not {difficulty!r}')
    return Path(data_dir) / f'pathfinder{resolution}' / DIFFICULTY_DIRS[difficulty]


def metadata_files(directory):
    """The metadata/<k>.npy files in folder order (0, 1, ..., 10, then other names)."""
    return sorted((directory / 'metadata').glob('*.npy'),
                  key=lambda p: (0, int(p.stem), '') if p.stem.isdigit() else (1, 0, p.stem))


def metadata_lines(file):
    """The text lines of a metadata file; a binary or unreadable one stops with one line."""
    try:
        data = file.read_bytes()
    except OSError as error:
        raise UserError(f'cannot read {file} ({error.strerror or error}): check the file and its permissions') from None
    if data.startswith(b'\x93NUMPY'):
        raise UserError(f'{file} is a binary numpy file, not LRA\'s text metadata (one line per image: '
                        f'"imgs/<k> sample_<i>.png <i> <label> ..."): use the metadata of the LRA release')
    lines = data.split(b'\n')
    for number, line in enumerate(lines, start=1):
        try:
            lines[number - 1] = line.decode('utf-8')
        except UnicodeDecodeError:
            raise UserError(f'{file}:{number}: binary data, not text: LRA\'s metadata files are text with one '
                            f'line per image ("imgs/<k> sample_<i>.png <i> <label> ...")') from None
    return lines


def read_metadata(directory):
    """[(image path (str), label, 'file:line')] listed by every metadata file, in folder order, each image
    once, and the number of repeated lines skipped (a repeat would count its image twice)."""
    listed, first, repeats, base = [], {}, 0, str(directory)
    for file in metadata_files(directory):
        for number, line in enumerate(metadata_lines(file), start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 4 or not fields[3].lstrip('-').isdigit():
                raise UserError(f'{file}:{number}: malformed metadata line: expected '
                                f'"imgs/<k> sample_<i>.png <i> <label> ...", found {line[:60]!r}')
            path, label, where = os.path.join(base, fields[0], fields[1]), int(fields[3]), f'{file}:{number}'
            if label not in (0, 1):
                raise UserError(f'{where}: label {label} is not 0 or 1 (the markers are connected or not)')
            if path in first:
                if first[path][0] != label:
                    raise UserError(f'{where}: {fields[0]}/{fields[1]} is listed again with label {label}, but '
                                    f'with label {first[path][0]} at {first[path][1]}: keep the right line only')
                repeats += 1
                continue
            first[path] = (label, where)
            listed.append((path, label, where))
    return listed, repeats


def gray_pixels(path):
    """A PNG's pixels as uint8 (H, W), as TensorFlow's decode_png(channels=1) gives them to LRA: 8-bit gray
    as is, 16-bit gray as x >> 8 (libpng's strip-16; Pillow's convert('L') would clip it to 0 or 255),
    1-bit gray as 0 or 255, gray with alpha without its alpha. Colour (libpng's own weights) is refused."""
    from PIL import Image  # only when the cache is built
    with Image.open(path) as image:
        image.load()
        if image.mode == 'L':
            return np.asarray(image)
        if image.mode.startswith('I;16') or (image.mode == 'I' and image.format == 'PNG'):  # 16-bit gray
            return (np.asarray(image).astype(np.uint32) >> 8).astype(np.uint8)
        if image.mode in ('1', 'LA'):
            return np.asarray(image.convert('L'))
        raise UserError(f'{path} is a {image.mode} image: only grayscale PNGs (8 or 16 bits) are read faithfully; '
                        f'convert it to 8-bit grayscale')


def read_images(listed, resolution, directory):
    """Every listed, non-empty image -> {'inputs' (N, res*res) uint8, 'targets' (N,) int32}."""
    inputs, targets, skipped = [], [], 0
    for path, label, where in listed:
        if not os.path.isfile(path) or os.path.getsize(path) == 0:
            skipped += 1  # LRA filters out empty images; a missing one is as unusable
            continue
        try:
            pixels = gray_pixels(path)
        except UserError:
            raise
        except Exception as error:  # noqa: BLE001 - Pillow raises many kinds for a damaged file
            raise UserError(f'cannot read the image {path} (listed at {where}): {type(error).__name__}: {error}; '
                            f'repair or replace it, or delete its metadata line') from None
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
    have = len(read_metadata(directory)[0]) if (directory / 'metadata').is_dir() else 0
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
    listed, repeats = read_metadata(directory)
    if repeats:
        print(f'skipped {repeats} repeated line(s) in {directory / "metadata"} (an image listed more than once)')
    # keyed on every metadata file and every listed image: a replaced image or label rebuilds the cache
    arrays = cached_arrays(directory / 'images', ('inputs', 'targets'),
                           lambda: read_images(listed, config.resolution, directory), f'decoding the images of {directory}',
                           settings={'resolution': config.resolution, 'loader': CACHE_VERSION},
                           sources=[*metadata_files(directory), *(path for path, _, _ in listed)])
    return split(arrays)
