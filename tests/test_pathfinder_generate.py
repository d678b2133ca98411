"""Tests for pathfinder/generate.py, the Pathfinder (LRA) image generator.

The label of every image is checked against the documented connectivity rule with connected
components computed here independently (a square dilation, then a union-find over 8-neighbours),
not with the generator's own flood fill; that flood fill is checked against them too.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from pathfinder import generate as pg

# The rule as documented in pathfinder/generate.py: path pixels are >= 16; two path pixels are
# linked when their Chebyshev distance is at most LINK[res]; markers are 255.
THRESHOLD = 16
LINK = {32: 2, 128: 5}
MARKER = 255
DIRS = {'easy': 'curv_baseline', 'intermediate': 'curv_contour_length_9', 'hard': 'curv_contour_length_14'}


# --------------------------------------------------------------------------
# Independent reference: connected components


class Components:
    """Components of the path pixels (>= threshold) where pixels within Chebyshev distance `link`
    are linked. Each path pixel p is grown into the square p + {0..link-1}^2; two such squares are
    8-adjacent or overlap iff their pixels are within Chebyshev distance link, so the 8-connected
    components of the grown set are the components of the rule. Union-find in plain Python."""

    def __init__(self, image: np.ndarray, threshold: int, link: int):
        self.fg = np.asarray(image) >= threshold
        h, w = self.fg.shape
        grown = np.zeros((h + link - 1, w + link - 1), bool)
        for dy in range(link):
            for dx in range(link):
                grown[dy:dy + h, dx:dx + w] |= self.fg
        cells = list(zip(*(axis.tolist() for axis in np.nonzero(grown))))
        self.index = {cell: i for i, cell in enumerate(cells)}
        self.parent = list(range(len(cells)))
        for (r, c), i in self.index.items():
            for dr, dc in ((0, 1), (1, -1), (1, 0), (1, 1)):
                j = self.index.get((r + dr, c + dc))
                if j is not None:
                    self._union(i, j)

    def _find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def _union(self, i: int, j: int) -> None:
        a, b = self._find(i), self._find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)

    def of(self, pixel) -> int | None:
        """Component id of a path pixel, None for a background pixel."""
        r, c = int(pixel[0]), int(pixel[1])
        if not self.fg[r, c]:
            return None
        return self._find(self.index[(r, c)])

    def pixels(self, component: int) -> int:
        return sum(1 for r, c in zip(*np.nonzero(self.fg)) if self.of((r, c)) == component)

    def count(self) -> int:
        return len({self.of((r, c)) for r, c in zip(*np.nonzero(self.fg))})


def test_reference_components_on_hand_made_images():
    image = np.zeros((7, 12), np.uint8)
    image[3, 1:3] = 200  # dash
    image[3, 4:6] = 200  # one background pixel further: Chebyshev distance 2
    image[3, 8:10] = 200  # two background pixels further: distance 3
    image[5, 11] = 16  # diagonal step of 2 from (3, 9): linked at link 2; exactly at the threshold
    image[0, 0] = 15  # below the threshold: background
    two = Components(image, THRESHOLD, 2)
    assert two.of((3, 1)) == two.of((3, 5)) != two.of((3, 8)) == two.of((5, 11))
    assert two.of((0, 0)) is None and two.count() == 2
    one = Components(image, THRESHOLD, 1)
    assert one.count() == 4 and one.of((3, 1)) != one.of((3, 4))
    three = Components(image, THRESHOLD, 3)
    assert three.count() == 1


def test_generator_flood_fill_agrees_with_reference():
    rng = np.random.default_rng(5)
    for trial in range(150):
        h, w = rng.integers(3, 40, size=2)
        link = int(rng.integers(1, 6))
        image = np.where(rng.random((h, w)) < rng.uniform(0.03, 0.3), 255, 0).astype(np.uint8)
        ones = np.argwhere(image > 0)
        if len(ones) < 2:
            continue
        ref = Components(image, THRESHOLD, link)
        for _ in range(5):
            a, b = ones[rng.integers(len(ones), size=2)]
            assert pg.markers_connected(image, a, b, THRESHOLD, link) == (ref.of(a) == ref.of(b)), (trial, a, b)
    image = np.zeros((4, 4), np.uint8)
    image[0, 0] = 255
    assert not pg.markers_connected(image, (0, 0), (3, 3), THRESHOLD, 2)  # b is background


# --------------------------------------------------------------------------
# Generated images: labels, markers, balance


def test_documented_rule_matches_module():
    assert pg.THRESHOLD == THRESHOLD and pg.LINK == LINK and pg.MARKER_VALUE == MARKER
    assert pg.DIFFICULTY_DIRS == DIRS and pg.IMAGES_PER_FOLDER == 1000
    for res in (32, 128):
        st = pg.settings(res, 'hard')
        assert (st.threshold, st.link, st.contour_length, st.distractor_length) == (THRESHOLD, LINK[res], 14, 4)
    assert pg.settings(32, 'hard').num_distractors == 5 and pg.settings(128, 'hard').num_distractors == 8
    assert [pg.settings(32, d).contour_length for d in ('easy', 'intermediate')] == [6, 9]


@pytest.fixture(scope='module')
def samples():
    """{res: [(image, label, info)]}: 300 images at 32 px, 40 at 128 px, labels drawn by the generator."""
    out = {}
    for res, n in ((32, 300), (128, 40)):
        rng = np.random.default_rng(100 + res)
        out[res] = [pg.generate_image(rng, res, 'hard') for _ in range(n)]
    return out


def _near_path_pixel(comp: Components, xy):
    """Component of a path pixel within one pixel of point (x, y), else None."""
    r, c = int(np.floor(xy[1])), int(np.floor(xy[0]))
    h, w = comp.fg.shape
    found = {comp.of((rr, cc)) for rr in range(r - 1, r + 2) for cc in range(c - 1, c + 2)
             if 0 <= rr < h and 0 <= cc < w and comp.fg[rr, cc]}
    found.discard(None)
    return found


@pytest.mark.parametrize('res', [32, 128])
def test_label_is_marker_connectivity(samples, res):
    labels = []
    for image, label, info in samples[res]:
        assert image.dtype == np.uint8 and image.shape == (res, res)
        comp = Components(image, THRESHOLD, LINK[res])
        a, b = info['marker_pixels']
        ca, cb = comp.of(a), comp.of(b)
        assert ca is not None and cb is not None
        assert (ca == cb) == (label == 1), (res, label, info['markers'])
        # Not vacuous: each marker's component holds the whole target path it sits on.
        s, e = info['start_target'], info['end_target']
        assert (s == e) == (label == 1)
        for target, want in ((s, ca), (e, cb)):
            for center in info['targets'][target]['centers']:
                assert want in _near_path_pixel(comp, center)
        assert comp.pixels(ca) > 20  # a path, not only a marker
        # The paths are dashed: their cores (>= 64) fall apart into many 8-connected pieces.
        assert Components(image, 64, 1).count() >= 14
        labels.append(label)
    assert set(labels) == {0, 1}


def test_label_balance(samples):
    labels = [label for _, label, _ in samples[32]]
    assert 0.4 <= np.mean(labels) <= 0.6


@pytest.mark.parametrize('res', [32, 128])
def test_markers_are_discs_at_path_ends(samples, res):
    st = pg.settings(res, 'hard')
    for image, label, info in samples[res]:
        markers = info['markers']  # (2, 2) centres (x, y)
        assert [image[p] for p in info['marker_pixels']] == [MARKER, MARKER]
        for (x, y), (r, c) in zip(markers, info['marker_pixels']):
            assert (int(np.floor(y)), int(np.floor(x))) == (r, c)
        # 255 only inside the two discs, and each disc has its full-intensity core.
        rows, cols = np.nonzero(image == MARKER)
        centre_x, centre_y = cols + 0.5, rows + 0.5
        dist = np.hypot(centre_x[:, None] - markers[None, :, 0], centre_y[:, None] - markers[None, :, 1])
        assert (dist.min(axis=1) <= st.marker_radius).all()
        assert ((dist <= 0.75).sum(axis=0) >= 1).all()
        # On the start tip of target s and the end tip of the marked target: half a paddle
        # from the first / last paddle centre (up to the 1/2-pixel position grid).
        s, e = info['start_target'], info['end_target']
        first = info['targets'][s]['centers'][0]
        last = info['targets'][e]['centers'][-1]
        assert abs(np.hypot(*(markers[0] - first)) - st.paddle_length / 2) <= 0.75
        assert abs(np.hypot(*(markers[1] - last)) - st.paddle_length / 2) <= 0.75
        assert len(info['targets'][s]['centers']) == len(info['targets'][e]['centers']) == st.contour_length


def test_rejected_images_are_redrawn(monkeypatch):
    """A failed connectivity check makes the generator draw the image again."""
    real, calls = pg.markers_connected, []

    def wrong_once(*args):
        calls.append(1)
        answer = real(*args)
        return (not answer) if len(calls) == 1 else answer

    monkeypatch.setattr(pg, 'markers_connected', wrong_once)
    image, label, info = pg.generate_image(np.random.default_rng(0), 32, 'hard', label=1)
    assert info['rejections'] == 1 and len(calls) == 2
    comp = Components(image, THRESHOLD, 2)
    assert comp.of(info['marker_pixels'][0]) == comp.of(info['marker_pixels'][1])


@pytest.mark.parametrize('difficulty', ['easy', 'intermediate'])
def test_other_difficulties(difficulty):
    rng = np.random.default_rng(7)
    st = pg.settings(32, difficulty)
    for _ in range(10):
        image, label, info = pg.generate_image(rng, 32, difficulty)
        assert all(len(t['centers']) == st.contour_length for t in info['targets'])
        assert all(len(d) <= st.distractor_length for d in info['distractors'])
        comp = Components(image, THRESHOLD, 2)
        a, b = info['marker_pixels']
        assert (comp.of(a) == comp.of(b)) == (label == 1)


def test_determinism():
    def draw(seed, res=32):
        rng = np.random.default_rng(seed)
        return [pg.generate_image(rng, res, 'hard')[0] for _ in range(3)]

    same, again, other = draw(1), draw(1), draw(2)
    assert all(np.array_equal(x, y) for x, y in zip(same, again))
    assert not any(np.array_equal(x, y) for x, y in zip(same, other))
    assert np.array_equal(draw(3, 128)[0], draw(3, 128)[0])


def test_bad_arguments_raise(tmp_path):
    with pytest.raises(ValueError):
        pg.generate_image(np.random.default_rng(0), 64)
    with pytest.raises(ValueError):
        pg.generate_image(np.random.default_rng(0), 32, 'extreme')
    for kwargs in ({'count': 0}, {'seed': -1}, {'workers': 0}, {'resolution': 33}, {'difficulty': 'x'}):
        with pytest.raises(ValueError):
            pg.write_dataset(tmp_path, **{'count': 5, **kwargs}, verbose=False)
    assert not (tmp_path / 'pathfinder32').exists() and not (tmp_path / 'pathfinder33').exists()


# --------------------------------------------------------------------------
# On-disk layout


def read_layout(directory: Path, res: int, difficulty: str = 'hard'):
    """Checks every metadata line and its PNG; returns [(folder, index, label, pixels)]."""
    st = pg.settings(res, difficulty)
    files = sorted((directory / 'metadata').iterdir(), key=lambda p: int(p.stem))
    assert all(p.suffix == '.npy' and p.stem.isdigit() for p in files)
    rows = []
    for k, file in enumerate(files):
        assert file.stem == str(k)
        lines = file.read_text().splitlines()
        assert 1 <= len(lines) <= 1000
        for i, line in enumerate(lines):
            fields = line.split(' ')
            assert len(fields) == 11, line
            assert fields[:3] == [f'imgs/{k}', f'sample_{i}.png', str(i)]
            label = int(fields[3])
            assert label in (0, 1)
            assert float(fields[4]) == st.continuity and int(fields[5]) == st.contour_length
            assert int(fields[6]) == st.distractor_length and float(fields[7]) == st.paddle_length
            assert float(fields[8]) == st.thickness and int(fields[9]) in st.margins and fields[10] == '1'
            with Image.open(directory / fields[0] / fields[1]) as png:
                assert png.format == 'PNG' and png.mode == 'L' and png.size == (res, res)
                pixels = np.asarray(png)
            rows.append((k, i, label, pixels))
    return rows


def check_labels(rows, res):
    for _, _, label, pixels in rows:
        comp = Components(pixels, THRESHOLD, LINK[res])
        ends = np.argwhere(pixels == MARKER)
        marked = {comp.of(p) for p in ends}
        # Two markers: one component when the label is 1, two when it is 0.
        assert len(marked) == (1 if label == 1 else 2)


@pytest.mark.parametrize('res, count', [(32, 24), (128, 6)])
def test_write_dataset_layout(tmp_path, res, count):
    directory = pg.write_dataset(tmp_path, resolution=res, difficulty='hard', count=count, seed=4, verbose=False)
    assert directory == tmp_path / f'pathfinder{res}' / 'curv_contour_length_14'
    rows = read_layout(directory, res)
    assert [(k, i) for k, i, _, _ in rows] == [(0, i) for i in range(count)]
    names = sorted(p.name for p in (directory / 'imgs' / '0').iterdir())
    assert names == sorted(f'sample_{i}.png' for i in range(count))
    check_labels(rows, res)
    assert {label for _, _, label, _ in rows} == {0, 1}


def test_write_dataset_prefix_and_stale_metadata(tmp_path):
    small = pg.write_dataset(tmp_path / 'a', 32, 'easy', count=8, seed=9, verbose=False)
    (small / 'metadata' / '7.npy').write_text('imgs/7 sample_0.png 0 1\n')  # left by an earlier run
    (small / 'metadata' / '.0.npy.123.tmp').write_text('partial')
    pg.write_dataset(tmp_path / 'a', 32, 'easy', count=5, seed=9, verbose=False)
    assert sorted(p.name for p in (small / 'metadata').iterdir()) == ['0.npy']
    larger = read_layout(pg.write_dataset(tmp_path / 'b', 32, 'easy', count=12, seed=9, verbose=False), 32, 'easy')
    smaller = read_layout(small, 32, 'easy')
    assert len(smaller) == 5
    for (_, _, la, pa), (_, _, lb, pb) in zip(smaller, larger):
        assert la == lb and np.array_equal(pa, pb)


def test_workers_do_not_change_output(tmp_path):
    """1003 images: folder 0 (1000, exactly balanced) and folder 1 (3, indices from 0)."""
    one = pg.write_dataset(tmp_path / 'one', 32, 'easy', count=1003, seed=11, workers=1, verbose=False)
    two = pg.write_dataset(tmp_path / 'two', 32, 'easy', count=1003, seed=11, workers=2, verbose=False)
    rows = read_layout(two, 32, 'easy')
    assert [(k, i) for k, i, _, _ in rows] == [(0, i) for i in range(1000)] + [(1, 0), (1, 1), (1, 2)]
    assert sum(label for k, _, label, _ in rows if k == 0) == 500
    for name in ('metadata/0.npy', 'metadata/1.npy', 'imgs/0/sample_0.png', 'imgs/0/sample_999.png',
                 'imgs/1/sample_2.png'):
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    assert sorted(p.name for p in (two / 'imgs' / '1').iterdir()) == [f'sample_{i}.png' for i in range(3)]
    check_labels(rows[::50], 32)


# --------------------------------------------------------------------------
# Command line


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_cli_from_repo_root(tmp_path):
    result = run_cli(['pathfinder/generate.py', '--output_dir', str(tmp_path / 'cli'), '--resolution', '32',
                      '--difficulty', 'hard', '--count', '6', '--seed', '2'], ROOT)
    assert result.returncode == 0, result.stderr
    assert 'wrote 6 images' in result.stdout.splitlines()[-1]
    written = tmp_path / 'cli' / 'pathfinder32' / 'curv_contour_length_14'
    expected = pg.write_dataset(tmp_path / 'api', 32, 'hard', count=6, seed=2, verbose=False)
    for name in ['metadata/0.npy'] + [f'imgs/0/sample_{i}.png' for i in range(6)]:
        assert (written / name).read_bytes() == (expected / name).read_bytes(), name


def test_cli_from_package_directory(tmp_path):
    result = run_cli(['generate.py', '--output_dir', str(tmp_path), '--resolution', '128', '--count', '2',
                      '--difficulty', 'easy'], ROOT / 'pathfinder')
    assert result.returncode == 0, result.stderr
    assert len(read_layout(tmp_path / 'pathfinder128' / 'curv_baseline', 128, 'easy')) == 2


@pytest.mark.parametrize('bad', [['--count', '0'], ['--count', 'x'], ['--resolution', '64'],
                                 ['--difficulty', 'extreme'], ['--seed', '-1'], ['--workers', '0'],
                                 ['--bogus', '1'], []])
def test_cli_rejects_bad_arguments(tmp_path, bad):
    args = ['pathfinder/generate.py'] + ([] if bad == [] else ['--output_dir', str(tmp_path), '--count', '2'] + bad)
    result = run_cli(args, ROOT)
    assert result.returncode != 0
    assert result.stderr.count('\n') == 1 and 'error' in result.stderr, result.stderr
    assert 'Traceback' not in result.stderr
    assert not list(tmp_path.iterdir())
