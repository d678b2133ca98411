#!/usr/bin/env python3
"""Pathfinder generator (Long Range Arena): dashed curvy paths and two disc markers.

An image holds several dashed paths ("snakes" of short line segments called paddles) and two
markers. The label is 1 when both markers sit on the two ends of one path, 0 when they sit on ends
of two different paths. The drawing follows the original generator (drewlinsley/pathfinder,
snakes2.py, with LRA's settings):

* Two target snakes of ``contour_length`` paddles grow together. The first tail is uniform in the
  square at least ``2 * seed_distance`` from the border, the second ``seed_distance`` away at a
  random integer-degree angle; each first paddle has a random orientation. A paddle is a line
  ``paddle_length`` long and ``thickness`` wide (round caps), rendered at ``antialias`` times the
  resolution and reduced with a Lanczos filter, at intensity ``paddle_contrast * snake_contrast``.
* Growth: each pivot lies ``paddle_length + 2 * margin`` ahead of the last, so the dashes have gaps;
  the next paddle runs from ``margin`` to ``paddle_length + margin`` past the pivot, so its head is
  on the circle of radius ``paddle_length + margin``. Its direction is drawn from the turns (every
  TURN_STEP degrees) with weight ``cos(min(|turn| * continuity, pi / 2)) ** 2``, among the paddles
  that collide with nothing (the original redraws a colliding paddle: the same distribution
  without the retry limit). At a dead end the pair goes back BACKTRACK_STEPS paddles and regrows
  them; after MAX_BACKTRACKS dead ends the pair is drawn again (the original only redraws pairs,
  which is far slower). Distractors (``num_distractors`` snakes of ``distractor_length`` paddles,
  incomplete ones kept) follow, each from a uniformly drawn free pixel, and stop when less than 1%
  of the window is free. No single-paddle noise.
* Markers are discs of ``marker_radius`` at intensity 1.0: one on the start tip of target s (s
  random), the other on the end tip of s (label 1) or of the other target (label 0).
* Compositing is the pixel-wise maximum, clipped to [0, 1] and scaled by 255. The markers (1.0)
  are always the maximum and the background (0) the minimum, so this is the min-max scaling to
  uint8: marker pixels fully inside the disc, always including the pixel of the centre, are
  exactly 255 (MARKER_VALUE); paddle pixels stay below (at most 217 at 32 px, 201 at 128 px: the
  thin antialiased lines never cover a whole pixel), so 255 appears only in markers.

Positions live on the grid of 1/antialias pixel, and paddles are stamped from sprites rendered
once per orientation (integer degrees) and sub-pixel offset, each reduced with the Lanczos filter
on its own (the original reduces the whole image once).

The connectivity rule, which every image satisfies: the path pixels are those >= THRESHOLD (16);
two path pixels are linked when their Chebyshev distance (max(|d row|, |d col|)) is at most
LINK[res] (2 at 32 px, 5 at 128 px), and connected when a chain of links joins them. Equivalently:
dilate the path pixels with a LINK x LINK square, then take 8-connected components. The pixels of
the two marker centres are connected if and only if the label is 1. Growth makes it so:

* every paddle is linked to the previous paddle of its snake: checked once, when the tables are
  built, for every sub-pixel position, direction and turn (a turn that failed would never be
  drawn; none fails at these settings), so the dash gaps of a path are always bridged;
* the path pixels of a paddle stay at Chebyshev distance > LINK from every path pixel of every
  other snake and of the markers, which are never linked to a path other than their own (the end
  marker is also kept that far from the start marker); this is the original's margin, widened
  to one pixel more than the widest gap inside a path;
* a paddle also keeps off (distance > 1) the older paddles of its own snake.

After rendering the rule is checked again (a bit-parallel flood fill) and an image that failed it
would be drawn again (counted as a rejection; none has been seen).

Output, the LRA layout: <output_dir>/pathfinder<res>/<difficulty dir>/imgs/<k>/sample_<i>.png
(8-bit grayscale, mode L) and metadata/<k>.npy, a text file with one line per image:
``imgs/<k> sample_<i>.png <i> <label> <continuity> <contour_len> <distractor_len> <paddle_len>
<thickness> <margin> 1``. Folder k holds IMAGES_PER_FOLDER images drawn with
numpy.random.default_rng([seed, k]) and exactly balanced labels (a permutation of 500 zeros and
500 ones; a shorter last folder takes its prefix), so the output depends only on the seed, never
on the number of worker processes, and a smaller count gives a prefix of a larger one. A folder's
metadata file is removed first and written last, atomically: a folder without one is incomplete.
Usage::

    python pathfinder/generate.py --output_dir DIR --count N [--resolution 32|128]
        [--difficulty easy|intermediate|hard] [--seed S] [--workers W]
"""

from __future__ import annotations

import math
import multiprocessing
import os
import queue
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, from anywhere
from utils import OneLineParser, integer_at_least, run_generator  # noqa: E402  (no JAX import)

RESOLUTIONS = (32, 128)
DIFFICULTY_DIRS = {'easy': 'curv_baseline', 'intermediate': 'curv_contour_length_9', 'hard': 'curv_contour_length_14'}
CONTOUR_LENGTHS = {'easy': 6, 'intermediate': 9, 'hard': 14}
IMAGES_PER_FOLDER = 1000

THRESHOLD = 16  # uint8 value from which a pixel is a path pixel
LINK = {32: 2, 128: 5}  # Chebyshev distance up to which two path pixels are linked
MARKER_VALUE = 255  # marker pixels fully inside the disc
TURN_STEP = {32: 5, 128: 2}  # degrees between the candidate turns of a growing snake

BACKTRACK_STEPS = 2  # paddles the target pair regrows at a dead end
MAX_BACKTRACKS = 20  # dead ends per target pair before it is drawn again
PAIR_TRIALS = 10_000  # target pairs per image before giving up (never reached in practice)
DISTRACTOR_TRIALS = 10  # seeds tried per distractor
STOP_FREE = 0.01  # distractors stop when less than this share of the canvas is free


@dataclass(frozen=True)
class Settings:
    """The drawing parameters of one resolution and difficulty (lengths in output pixels)."""

    resolution: int
    padding: int
    antialias: int
    paddle_length: int
    thickness: float
    margins: tuple  # one is drawn per image
    seed_distance: int
    marker_radius: float
    continuity: float
    snake_contrast: float
    paddle_contrast: float
    contour_length: int
    distractor_length: int
    num_distractors: int
    threshold: int
    link: int


def settings(resolution: int, difficulty: str = 'hard') -> Settings:
    """LRA's settings for Pathfinder-32 and Path-X (128).

    Distractors are contour_length // 3 paddles long, and as many as keep 20 (32 px) or 32 (128 px)
    distractor paddles in all: hard (14) has LRA's 5 of 4 at 32 px and Path-X's 8 of 4 at 128 px;
    intermediate (9) has 6 of 3 and 10 of 3; easy (6) has 10 of 2 and 16 of 2.
    """
    _check_choice('resolution', resolution, RESOLUTIONS)
    _check_choice('difficulty', difficulty, tuple(DIFFICULTY_DIRS))
    contour = CONTOUR_LENGTHS[difficulty]
    distractor = contour // 3
    common = dict(contour_length=contour, distractor_length=distractor, padding=1, antialias=2,
                  paddle_contrast=0.75, threshold=THRESHOLD, link=LINK[resolution])
    if resolution == 32:
        return Settings(resolution=32, paddle_length=2, thickness=0.5, margins=(1,), seed_distance=7,
                        marker_radius=1.5, continuity=1.0, snake_contrast=2.0,
                        num_distractors=20 // distractor, **common)
    return Settings(resolution=128, paddle_length=5, thickness=1.5, margins=(2, 3), seed_distance=20,
                    marker_radius=3.0, continuity=1.8, snake_contrast=0.9,
                    num_distractors=32 // distractor, **common)


def _check_choice(name, value, choices):
    if isinstance(value, bool) or value not in choices:
        raise ValueError(f'{name} must be one of {", ".join(map(str, choices))}, got {value!r}')


# --------------------------------------------------------------------------
# Sprites and move tables, built once per process


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """(..., n, n) bool -> (..., n + 2r, n + 2r): True within Chebyshev distance r of a True pixel
    (output pixel [i, j] is input pixel [i - r, j - r])."""
    n = mask.shape[-1]
    wide = np.zeros(mask.shape[:-2] + (n, n + 2 * r), bool)
    for d in range(2 * r + 1):
        wide[..., :, d:d + n] |= mask
    out = np.zeros(mask.shape[:-2] + (n + 2 * r, n + 2 * r), bool)
    for d in range(2 * r + 1):
        out[..., d:d + n, :] |= wide
    return out


def _lanczos_reduce(hi: np.ndarray, factor: int) -> np.ndarray:
    """(N, n * factor, n * factor) float -> (N, n, n): Pillow's Lanczos (a = 3) reduction."""
    from PIL import Image

    n = hi.shape[-1] // factor
    return np.stack([np.asarray(Image.fromarray(x.astype(np.float32)).resize((n, n), Image.Resampling.LANCZOS))
                     for x in hi])


def _flat_cells(masks: np.ndarray, n: int, shift: int) -> np.ndarray:
    """(N, s, s) bool -> (N, M) flat offsets (row * n + col, rows and cols moved by `shift`) of each
    mask's True pixels, every list repeated to the longest length M."""
    width = int(masks.reshape(len(masks), -1).sum(axis=1).max())
    out = np.zeros((len(masks), width), np.intp)
    for i, mask in enumerate(masks):
        rows, cols = np.nonzero(mask)
        out[i] = np.resize((rows + shift) * n + cols + shift, width)
    return out


class _Sprites:
    """Paddle and marker stamps of one resolution, and the padded canvas they are stamped on.

    Canvas pixel [r, c] is window pixel [r - pad, c - pad]; positions are integers q in units of
    1/aa pixel (pixel [i, j] spans q_x in [aa j, aa (j + 1)), q_y in [aa i, aa (i + 1))). A paddle
    centred at (qx, qy) with orientation t (degrees) is stamp ``sid = ((t % 180) * aa + qy % aa) *
    aa + qx % aa`` with its top-left pixel at (qy // aa - h, qx // aa - h): ``value[sid]`` its
    pixels, ``fg[sid]`` its path pixels, ``offsets[sid]`` their flat canvas offsets (the list
    repeated to a common width), ``near[sid]`` (top-left at (top - link, left - link)) the pixels
    within the link distance of them, ``touch[sid]`` (top-left at (top - 1, left - 1)) those
    within distance 1. Markers likewise, stamp ``mid = (qy % aa) * aa + qx % aa``.
    """

    SUPERSAMPLE = 4  # coverage samples per axis per antialiased pixel

    def __init__(self, st: Settings):
        self.st = st
        self.aa = aa = st.antialias
        ss, link = self.SUPERSAMPLE, st.link
        half_paddle = st.paddle_length / 2 + st.thickness / 2
        self.h = h = int(math.ceil(max(half_paddle + 3, st.marker_radius + 1)))  # Lanczos support: 3 px
        self.size = size = 2 * h + 1
        self.pad = pad = h + link + st.paddle_length + 2 * max(st.margins) + 2
        self.n = n = st.resolution + 2 * pad
        lo, hi = pad + st.padding, pad + st.resolution - st.padding
        self.border = np.ones((n, n), bool)  # where no path pixel may be
        self.border[lo:hi, lo:hi] = False
        m = size * aa * ss
        grid = (np.arange(m) + 0.5) / (aa * ss)  # sample positions, output pixels
        sub = np.arange(aa) / aa
        # Paddles: capsules (a segment of paddle_length, radius thickness / 2).
        angles = np.deg2rad(np.arange(180))
        intensity = st.paddle_contrast * st.snake_contrast
        values = np.zeros((180, aa, aa, size, size), np.uint8)
        for fy in range(aa):
            dy = (grid - h - sub[fy])[:, None]  # (m, 1)
            for fx in range(aa):
                dx = (grid - h - sub[fx])[None, :]  # (1, m)
                for a0 in range(0, 180, 30):
                    ang = angles[a0:a0 + 30, None, None]
                    along = np.abs(dx * np.cos(ang) + dy * np.sin(ang)) - st.paddle_length / 2
                    across = -dx * np.sin(ang) + dy * np.cos(ang)
                    inside = np.maximum(along, 0) ** 2 + across ** 2 <= (st.thickness / 2) ** 2
                    cover = inside.reshape(-1, size * aa, ss, size * aa, ss).mean(axis=(2, 4))
                    reduced = _lanczos_reduce(cover * intensity, aa)
                    values[a0:a0 + 30, fy, fx] = np.rint(np.clip(reduced, 0, 1) * 255)
        values = values.reshape(-1, size, size)
        if values[:, [0, -1], :].any() or values[:, :, [0, -1]].any():
            raise RuntimeError('paddle sprites are cut off')
        if values.max() >= MARKER_VALUE:
            raise RuntimeError('paddles are as bright as markers')
        self.value, self.fg = values, values >= st.threshold
        self.near, self.touch = _dilate(self.fg, link), _dilate(self.fg, 1)
        if not self.fg.reshape(len(values), -1).any(axis=1).all():
            raise RuntimeError('a paddle without path pixels')
        self.offsets = _flat_cells(self.fg, n, 0)
        # Markers: discs, area coverage (so pixels fully inside are exactly MARKER_VALUE).
        markers = np.zeros((aa, aa, size, size), np.uint8)
        for fy in range(aa):
            for fx in range(aa):
                dy = (grid - h - sub[fy])[:, None]
                dx = (grid - h - sub[fx])[None, :]
                inside = dx * dx + dy * dy <= st.marker_radius ** 2
                markers[fy, fx] = np.rint(inside.reshape(size, aa * ss, size, aa * ss).mean(axis=(1, 3)) * MARKER_VALUE)
        self.marker = markers.reshape(-1, size, size)
        if (self.marker[:, h, h] != MARKER_VALUE).any():
            raise RuntimeError('a marker centre pixel is not fully covered')
        self.marker_fg = self.marker >= st.threshold
        self.marker_near = _dilate(self.marker_fg, link)
        # Flat canvas offsets, from a stamp's top-left pixel, of its path pixels and of the pixels
        # near them, for marking and testing without 2-D slices.
        self.near_cells = _flat_cells(self.near, n, -link)
        self.touch_cells = _flat_cells(self.touch, n, -1)
        self.marker_cells = _flat_cells(self.marker_fg, n, 0)
        self.marker_near_cells = _flat_cells(self.marker_near, n, -link)
        rad = np.deg2rad(np.arange(360))
        self.unit = np.stack([np.cos(rad), np.sin(rad)], axis=1)  # (360, 2) x, y
        self.moves = {margin: _Moves(self, margin) for margin in st.margins}

    def grid_step(self, radius: float) -> np.ndarray:
        """(360, 2) int: displacement by `radius` pixels in each integer-degree direction, in 1/aa px."""
        return np.rint(self.unit * radius * self.aa).astype(np.int64)


class _Table:
    """Candidate paddles centred `radius` from a grid point, for groups of directions: ``deg[r]``
    (K,) the directions (degrees) of group r. For a point at sub-pixel position (fy, fx), candidate
    (r, i) is stamp ``sid[fy, fx, r, i]``, its top-left pixel ``rel[fy, fx, r, i]`` (flat) from the
    point's pixel, its path pixels at flat offsets ``cells[fy, fx, r, i] - shift`` (P,) from it;
    ``d[t]`` is the centre's displacement in direction t (1/aa px)."""

    def __init__(self, sp: _Sprites, radius: float, deg: np.ndarray):
        aa, h, n = sp.aa, sp.h, sp.n
        self.deg = deg  # (R, K)
        self.d = sp.grid_step(radius)
        dx, dy = self.d[deg, 0], self.d[deg, 1]
        self.sid = np.zeros((aa, aa) + deg.shape, np.intp)
        self.rel = np.zeros((aa, aa) + deg.shape, np.intp)
        for fy in range(aa):
            for fx in range(aa):
                qx, qy = fx + dx, fy + dy
                self.sid[fy, fx] = ((deg % 180) * aa + qy % aa) * aa + qx % aa
                self.rel[fy, fx] = (qy // aa - h) * n + (qx // aa - h)
        cells = self.rel[..., None] + sp.offsets[self.sid]
        self.shift = int(max(0, -cells.min()))  # stored shifted to be >= 0
        self.cells = cells + self.shift  # (aa, aa, R, K, P)


class _Moves:
    """Growth tables for one margin."""

    def __init__(self, sp: _Sprites, margin: int):
        st = sp.st
        length = st.paddle_length
        self.margin = margin
        turns = np.arange(-180, 180, TURN_STEP[st.resolution])
        weight = np.cos(np.minimum(np.abs(turns) * np.pi / 180 * st.continuity, np.pi / 2)) ** 2
        keep = weight > 1e-9
        self.turns, self.turn_weight = turns[keep], weight[keep]
        # The first paddle, from the start tip: any of the 360 directions (one group).
        self.first = _Table(sp, length / 2, np.arange(360)[None, :])
        self.first_end = sp.grid_step(length).tolist()
        self.first_pivot = sp.grid_step(length + margin).tolist()
        self.first_weight = np.ones((sp.aa, sp.aa, 360))
        # Later paddles, from the pivot: group theta holds the turns from direction theta.
        self.step = _Table(sp, margin + length / 2, (np.arange(360)[:, None] + self.turns[None, :]) % 360)
        self.end = sp.grid_step(length + margin).tolist()
        self.pivot = sp.grid_step(length + 2 * margin).tolist()
        # Turn weights by pivot sub-pixel position, previous direction and turn, zero where the
        # new paddle would not be linked to the previous one (after a first paddle, or a later one).
        self.after_first = self.turn_weight * _links(sp, self, self.first.d, self.first_pivot)
        self.after_step = self.turn_weight * _links(sp, self, self.step.d, self.pivot)


def _links(sp: _Sprites, mv: _Moves, prev_d: np.ndarray, prev_pivot) -> np.ndarray:
    """(aa, aa, 360, K) bool: is the paddle grown from a pivot at sub-pixel position (fy, fx) in
    direction (theta + turn k) linked to the previous paddle, which had direction theta, its
    centre at prev_d[theta] from the previous point, and moved the pivot on by prev_pivot[theta]?
    Checked for every case once, so that growth never needs to."""
    aa, h, link, size = sp.aa, sp.h, sp.st.link, sp.size
    turns = mv.turns
    theta = np.arange(360)
    base = 64 * aa  # any pivot position far enough from 0 keeps the arithmetic non-negative
    rows, cols = np.divmod(sp.offsets, sp.n)  # path pixels of each stamp, relative to its top-left
    out = np.zeros((aa, aa, 360, len(turns)), bool)
    for fy in range(aa):
        for fx in range(aa):
            px, py = base + fx, base + fy
            back = np.asarray(prev_pivot)[theta]  # (360, 2)
            c1x = px - back[:, 0] + prev_d[theta, 0]
            c1y = py - back[:, 1] + prev_d[theta, 1]
            sid1 = ((theta % 180) * aa + c1y % aa) * aa + c1x % aa
            top1, left1 = c1y // aa - h, c1x // aa - h
            theta2 = (theta[:, None] + turns[None, :]) % 360  # (360, K)
            c2x, c2y = px + mv.step.d[theta2, 0], py + mv.step.d[theta2, 1]
            sid2 = ((theta2 % 180) * aa + c2y % aa) * aa + c2x % aa
            dy = (c2y // aa - h) - top1[:, None] + link  # new top-left in the previous `near` frame
            dx = (c2x // aa - h) - left1[:, None] + link
            r = rows[sid2] + dy[..., None]  # (360, K, P)
            c = cols[sid2] + dx[..., None]
            inside = (r >= 0) & (r < size + 2 * link) & (c >= 0) & (c < size + 2 * link)
            near = sp.near[sid1[:, None, None], np.clip(r, 0, size + 2 * link - 1), np.clip(c, 0, size + 2 * link - 1)]
            out[fy, fx] = (near & inside).any(axis=2)
    return out


_SPRITES: dict = {}


def _sprites(st: Settings) -> _Sprites:
    """The sprites of st's resolution (they do not depend on the difficulty)."""
    if st.resolution not in _SPRITES:
        _SPRITES[st.resolution] = _Sprites(settings(st.resolution))
    return _SPRITES[st.resolution]


# --------------------------------------------------------------------------
# Growth. A paddle is (sid, corner), a marker (mid, corner): the stamp and the flat canvas index
# of its top-left pixel; a position is (qx, qy) on the 1/aa grid of the canvas.


class _Snake:
    """A snake being grown."""

    __slots__ = ('paddles', 'centers', 'pivot', 'theta', 'start', 'end', 'blocked')

    def __init__(self, start, blocked):
        self.paddles, self.centers = [], []
        self.start = start  # position of the start tip
        self.end = None  # position of the end tip
        self.pivot, self.theta = None, None  # for the next paddle
        self.blocked = blocked  # pixels its path pixels may not occupy

    def state(self):
        return len(self.paddles), self.pivot, self.theta, self.end, self.blocked.copy()

    def restore(self, state):
        k, self.pivot, self.theta, self.end, blocked = state
        del self.paddles[k:], self.centers[k:]
        self.blocked = blocked.copy()


def _mark(sp: _Sprites, grid: np.ndarray, p, touch: bool = False) -> None:
    """Set paddle p's `near` pixels (its `touch` pixels if touch) in grid."""
    grid.ravel()[(sp.touch_cells if touch else sp.near_cells)[p[0]] + p[1]] = True


def _marker(sp: _Sprites, q):
    """The marker stamp (mid, corner) centred at position q."""
    qx, qy = q
    aa = sp.aa
    return (qy % aa) * aa + qx % aa, (qy // aa - sp.h) * sp.n + qx // aa - sp.h


def _mark_marker(sp: _Sprites, grid: np.ndarray, m) -> None:
    grid.ravel()[sp.marker_near_cells[m[0]] + m[1]] = True


def _marker_collides(sp: _Sprites, grid: np.ndarray, m) -> bool:
    return bool(grid.ravel()[sp.marker_cells[m[0]] + m[1]].any())


def _choose(rng, sp: _Sprites, snake: _Snake, table: _Table, group: int, q, weights: np.ndarray):
    """Draw a paddle among the candidates of `table`'s `group` around position q, with probability
    proportional to weights[fy, fx] (by q's sub-pixel position) among those whose path pixels avoid
    snake.blocked: (candidate index, paddle), or None when there is none."""
    aa, n = sp.aa, sp.n
    bx, fx = divmod(q[0], aa)
    by, fy = divmod(q[1], aa)
    base = by * n + bx
    around = snake.blocked.ravel()[base - table.shift:]  # flat canvas from the (shifted) point
    w = weights[fy, fx] * ~np.logical_or.reduce(around[table.cells[fy, fx, group]], axis=1)
    cum = w.cumsum()
    total = cum[-1]
    if total <= 0:
        return None
    i = min(int(cum.searchsorted(rng.random() * total, side='right')), len(w) - 1)
    return i, (int(table.sid[fy, fx, group, i]), base + int(table.rel[fy, fx, group, i]))


def _accept(sp: _Sprites, snake: _Snake, p, center) -> None:
    if snake.paddles:  # the next paddle links to this one and keeps clear of the older ones
        _mark(sp, snake.blocked, snake.paddles[-1], touch=True)
    snake.paddles.append(p)
    snake.centers.append(center)


def _first_paddle(rng, sp: _Sprites, mv: _Moves, snake: _Snake) -> bool:
    """Put the first paddle of `snake` at its start tip, in a uniformly drawn free direction."""
    chosen = _choose(rng, sp, snake, mv.first, 0, snake.start, mv.first_weight)
    if chosen is None:
        return False
    t, p = chosen
    x, y = snake.start
    dx, dy = mv.first.d[t]
    _accept(sp, snake, p, (x + int(dx), y + int(dy)))
    snake.theta = t
    snake.end = (x + mv.first_end[t][0], y + mv.first_end[t][1])
    snake.pivot = (x + mv.first_pivot[t][0], y + mv.first_pivot[t][1])
    return True


def _next_paddle(rng, sp: _Sprites, mv: _Moves, snake: _Snake) -> bool:
    """Grow `snake` by one paddle; False at a dead end."""
    weights = mv.after_first if len(snake.paddles) == 1 else mv.after_step
    chosen = _choose(rng, sp, snake, mv.step, snake.theta, snake.pivot, weights[:, :, snake.theta])
    if chosen is None:
        return False
    i, p = chosen
    t = int(mv.step.deg[snake.theta, i])
    x, y = snake.pivot
    dx, dy = mv.step.d[t]
    _accept(sp, snake, p, (x + int(dx), y + int(dy)))
    snake.theta = t
    snake.end = (x + mv.end[t][0], y + mv.end[t][1])
    snake.pivot = (x + mv.pivot[t][0], y + mv.pivot[t][1])
    return True


def _grow_targets(rng, sp: _Sprites, mv: _Moves, st: Settings, s: int, label: int):
    """(the two target snakes, the two marker stamps, e: the target holding the end marker), or
    None when the pair failed."""
    aa = sp.aa
    res, sd = st.resolution, st.seed_distance
    lo, hi = 2 * sd, res - 2 * sd
    x0 = math.floor((sp.pad + rng.uniform(lo, hi)) * aa + 0.5)
    y0 = math.floor((sp.pad + rng.uniform(lo, hi)) * aa + 0.5)
    dx, dy = sp.grid_step(sd)[int(rng.integers(360))].tolist()
    starts = [(x0, y0), (x0 + dx, y0 + dy)]
    snakes = [_Snake(start, sp.border.copy()) for start in starts]
    start_marker = _marker(sp, starts[s])
    if _marker_collides(sp, sp.border, start_marker):
        return None  # the start marker would leave the window
    _mark_marker(sp, snakes[1 - s].blocked, start_marker)
    for j in (0, 1):
        if not _first_paddle(rng, sp, mv, snakes[j]):
            return None
        _mark(sp, snakes[1 - j].blocked, snakes[j].paddles[-1])
    # Paddle i of both snakes; at a dead end (or when the end marker would touch the other target),
    # go back BACKTRACK_STEPS paddles and regrow them.
    e = s if label == 1 else 1 - s
    snapshots, i, backtracks = {}, 1, 0
    while True:
        if i < st.contour_length:
            snapshots[i] = [snake.state() for snake in snakes]
            for j in (0, 1):
                if not _next_paddle(rng, sp, mv, snakes[j]):
                    break
                _mark(sp, snakes[1 - j].blocked, snakes[j].paddles[-1])
            else:
                i += 1
                continue
        else:
            end_marker = _marker(sp, snakes[e].end)
            other = sp.border.copy()
            for p in snakes[1 - e].paddles:
                _mark(sp, other, p)
            _mark_marker(sp, other, start_marker)  # markers apart, even on one snake
            if not _marker_collides(sp, other, end_marker):
                break
        backtracks += 1
        if backtracks > MAX_BACKTRACKS:
            return None
        i = max(1, i - BACKTRACK_STEPS)
        for snake, state in zip(snakes, snapshots[i]):
            snake.restore(state)
    return snakes, (start_marker, end_marker), e


def _grow_distractors(rng, sp: _Sprites, mv: _Moves, st: Settings, zone: np.ndarray) -> list:
    """Distractor snakes, each kept clear of `zone`, which is updated with each of them."""
    pad, aa = sp.pad, sp.aa
    res = st.resolution
    window = zone[pad:pad + res, pad:pad + res]
    snakes = []
    for _ in range(st.num_distractors):
        free = np.flatnonzero(~window)
        if free.size < STOP_FREE * res * res:
            break
        snake = None
        for _ in range(DISTRACTOR_TRIALS):
            y, x = divmod(int(free[rng.integers(free.size)]), res)
            fx, fy = rng.integers(aa, size=2).tolist()
            candidate = _Snake(((pad + x) * aa + fx, (pad + y) * aa + fy), zone)
            if _first_paddle(rng, sp, mv, candidate):
                snake = candidate
                snake.blocked = zone.copy()
                break
        if snake is None:
            continue
        for _ in range(st.distractor_length - 1):
            if not _next_paddle(rng, sp, mv, snake):
                break  # incomplete distractors are kept
        for p in snake.paddles:
            _mark(sp, zone, p)
        snakes.append(snake)
    return snakes


def _render(sp: _Sprites, snakes: list, markers) -> np.ndarray:
    canvas = np.zeros((sp.n, sp.n), np.uint8)
    s, pad, res, n = sp.size, sp.pad, sp.st.resolution, sp.n
    stamps = [(sp.value[sid], corner) for snake in snakes for sid, corner in snake.paddles]
    stamps += [(sp.marker[mid], corner) for mid, corner in markers]
    for stamp, corner in stamps:
        top, left = divmod(corner, n)
        view = canvas[top:top + s, left:left + s]
        np.maximum(view, stamp, out=view)
    return np.ascontiguousarray(canvas[pad:pad + res, pad:pad + res])


def markers_connected(image: np.ndarray, a, b, threshold: int, link: int) -> bool:
    """The connectivity rule: are pixels a and b ((row, col)) joined by a chain of pixels >=
    threshold, each within Chebyshev distance `link` of the next? A flood fill from a on a
    bit-board: one Python int, rows `width + link` bits apart so that no shift wraps a row."""
    fg = np.asarray(image) >= threshold
    if not (fg[tuple(a)] and fg[tuple(b)]):
        return False
    h, w = fg.shape
    stride = w + link
    board = np.zeros((h, stride), bool)
    board[:, :w] = fg
    allowed = int.from_bytes(np.packbits(board, bitorder='little').tobytes(), 'little')
    reach, goal = 1 << int(a[0] * stride + a[1]), 1 << int(b[0] * stride + b[1])
    while True:
        row = reach
        for d in range(1, link + 1):
            row |= (reach << d) | (reach >> d)
        grown = row
        for d in range(1, link + 1):
            grown |= (row << d * stride) | (row >> d * stride)
        grown &= allowed
        if grown & goal:
            return True
        if grown == reach:
            return False
        reach = grown


def generate_image(rng: np.random.Generator, resolution: int = 32, difficulty: str = 'hard',
                   label: int | None = None):
    """One image: (uint8 (res, res) pixels, label, info), drawn with `rng`.

    `label` (0 or 1) defaults to a fair coin. Coordinates in info are (x, y) in pixels, pixel
    [r, c] spanning x in [c, c + 1), y in [r, r + 1). info holds 'margin'; 'markers' (2, 2), the
    centres of the marker on the start tip of target s and of the other marker; 'marker_pixels',
    the (row, col) of the pixels holding them (MARKER_VALUE); 'start_target' (s) and 'end_target',
    the targets they are on (equal iff label 1); 'targets', per target snake a dict with 'start'
    and 'end' tips and 'centers' (n, 2), its paddle centres; 'distractors', a paddle-centre array
    per distractor; 'pair_attempts', target pairs drawn; 'rejections', images drawn again because
    they failed the connectivity check.
    """
    st = settings(resolution, difficulty)
    sp = _sprites(st)
    if label is None:
        label = int(rng.integers(2))
    if isinstance(label, bool) or label not in (0, 1):
        raise ValueError(f'label must be 0 or 1, got {label!r}')
    label = int(label)
    margin = int(st.margins[rng.integers(len(st.margins))]) if len(st.margins) > 1 else int(st.margins[0])
    mv = sp.moves[margin]
    attempts = rejections = 0
    while True:
        s = int(rng.integers(2))
        grown = None
        while grown is None:
            attempts += 1
            if attempts > PAIR_TRIALS:
                raise RuntimeError(f'could not grow two target paths in {PAIR_TRIALS} attempts')
            grown = _grow_targets(rng, sp, mv, st, s, label)
        targets, markers, e = grown
        zone = sp.border.copy()
        for snake in targets:
            for p in snake.paddles:
                _mark(sp, zone, p)
        for m in markers:
            _mark_marker(sp, zone, m)
        distractors = _grow_distractors(rng, sp, mv, st, zone)
        image = _render(sp, targets + distractors, markers)
        pixels = [tuple(int(v) + sp.h - sp.pad for v in divmod(corner, sp.n)) for _, corner in markers]
        if markers_connected(image, pixels[0], pixels[1], st.threshold, st.link) == bool(label):
            break
        rejections += 1

    def window(q):
        return q[0] / sp.aa - sp.pad, q[1] / sp.aa - sp.pad

    info = {
        'margin': margin,
        'markers': np.array([window(targets[s].start), window(targets[e].end)]),
        'marker_pixels': tuple(pixels),
        'start_target': s,
        'end_target': e,
        'targets': [{'start': window(t.start), 'end': window(t.end),
                     'centers': np.array([window(c) for c in t.centers])} for t in targets],
        'distractors': [np.array([window(c) for c in d.centers]) for d in distractors],
        'pair_attempts': attempts,
        'rejections': rejections,
    }
    return image, label, info


# --------------------------------------------------------------------------
# Data set on disk


def _metadata_line(k: int, i: int, label: int, st: Settings, margin: int) -> str:
    return (f'imgs/{k} sample_{i}.png {i} {label} {float(st.continuity)} {st.contour_length} '
            f'{st.distractor_length} {st.paddle_length} {float(st.thickness)} {margin} 1\n')


_SINK = None  # where a folder reports progress: a queue in worker processes, else a function


def _init_worker(sink) -> None:
    global _SINK
    _SINK = sink
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle


def _report(done: int) -> None:
    if _SINK is None:
        return
    if callable(_SINK):
        _SINK(done)
    else:
        _SINK.put(done)


def _write_folder(job) -> dict:
    """Generate folder k: its PNGs, then its metadata file (atomically). Returns statistics."""
    from PIL import Image

    directory, resolution, difficulty, seed, k, size = job
    directory = Path(directory)
    st = settings(resolution, difficulty)
    begin = time.monotonic()
    rng = np.random.default_rng([seed, k])
    labels = rng.permutation(np.arange(IMAGES_PER_FOLDER) % 2)[:size].tolist()
    metadata = directory / 'metadata' / f'{k}.npy'
    metadata.unlink(missing_ok=True)  # the folder is incomplete until its new metadata is in place
    folder = directory / 'imgs' / str(k)
    folder.mkdir(parents=True, exist_ok=True)
    lines, stats = [], {'images': 0, 'ones': 0, 'pair_attempts': 0, 'rejections': 0}
    unreported, last = 0, time.monotonic()
    for i, label in enumerate(labels):
        image, label, info = generate_image(rng, resolution, difficulty, label=label)
        Image.fromarray(image).save(folder / f'sample_{i}.png', format='PNG')
        lines.append(_metadata_line(k, i, label, st, info['margin']))
        stats['images'] += 1
        stats['ones'] += label
        stats['pair_attempts'] += info['pair_attempts']
        stats['rejections'] += info['rejections']
        unreported += 1
        if time.monotonic() - last >= 0.5:
            _report(unreported)
            unreported, last = 0, time.monotonic()
    temp = metadata.with_name(f'.{k}.npy.{os.getpid()}.tmp')
    try:
        with open(temp, 'w') as file:
            file.writelines(lines)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, metadata)
    finally:
        if temp.exists():
            temp.unlink()
    _report(unreported)
    stats['seconds'] = time.monotonic() - begin
    return stats


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f'{name} must be an integer >= {minimum}, got {value!r}')


class _Progress:
    def __init__(self, total: int, verbose: bool):
        self.total, self.verbose, self.done = total, verbose, 0
        self.begin = self.last = time.monotonic()

    def __call__(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.verbose and now - self.last >= 2.0 and self.done < self.total:
            self.last = now
            rate = self.done / max(now - self.begin, 1e-9)
            print(f'{self.done}/{self.total} images ({self.done / self.total:.1%}), {rate:.0f} images/s, '
                  f'{now - self.begin:.0f} s elapsed, about {(self.total - self.done) / max(rate, 1e-9):.0f} s left',
                  flush=True)


def write_dataset(output_dir, resolution: int = 32, difficulty: str = 'hard', count: int = 200_000,
                  seed: int = 0, workers: int | None = None, verbose: bool = True) -> Path:
    """Write `count` images in the LRA layout under output_dir; returns the difficulty directory
    (<output_dir>/pathfinder<res>/<difficulty dir>).

    Folders are independent (folder k: numpy.random.default_rng([seed, k])), so `workers`
    processes (default: one per CPU, at most one per folder; 1 below 2000 images) only change the
    speed. Metadata files of folders beyond this count, left by an earlier larger run, are removed
    so that the directory lists exactly this data set.
    """
    _check_choice('resolution', resolution, RESOLUTIONS)
    _check_choice('difficulty', difficulty, tuple(DIFFICULTY_DIRS))
    _check_int('count', count, 1)
    _check_int('seed', seed, 0)
    if workers is not None:
        _check_int('workers', workers, 1)
    directory = Path(output_dir) / f'pathfinder{resolution}' / DIFFICULTY_DIRS[difficulty]
    (directory / 'metadata').mkdir(parents=True, exist_ok=True)
    (directory / 'imgs').mkdir(exist_ok=True)
    folders = -(-count // IMAGES_PER_FOLDER)
    for path in (directory / 'metadata').iterdir():
        stale = path.suffix == '.npy' and path.stem.isdigit() and int(path.stem) >= folders
        if stale or (path.name.startswith('.') and path.name.endswith('.tmp')):
            path.unlink()
    jobs = [(str(directory), resolution, difficulty, int(seed), k,
             min(IMAGES_PER_FOLDER, count - k * IMAGES_PER_FOLDER)) for k in range(folders)]
    if workers is None:
        workers = 1 if count < 2 * IMAGES_PER_FOLDER else min(_cpus(), folders)
    workers = min(workers, folders)
    if verbose:
        print(f'generating {count} Pathfinder images ({resolution}x{resolution}, {difficulty}) into {directory} '
              f'with {workers} process(es) ...', flush=True)
    progress = _Progress(count, verbose)
    results = []
    if workers == 1:
        global _SINK
        previous, _SINK = _SINK, progress
        try:
            results = [_write_folder(job) for job in jobs]
        finally:
            _SINK = previous
    else:
        # forkserver or spawn, never fork: the caller may be running threads (JAX).
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context('forkserver' if 'forkserver' in methods else 'spawn')
        sink = context.Queue()
        with context.Pool(workers, initializer=_init_worker, initargs=(sink,)) as pool:
            pending = [pool.apply_async(_write_folder, (job,)) for job in jobs]
            while pending:
                try:
                    progress(sink.get(timeout=0.2))
                    while True:
                        progress(sink.get_nowait())
                except queue.Empty:
                    pass
                still = []
                for result in pending:
                    if result.ready():
                        results.append(result.get())  # re-raises a worker's exception
                    else:
                        still.append(result)
                pending = still
    seconds = time.monotonic() - progress.begin
    if verbose:
        images = sum(r['images'] for r in results)
        ones = sum(r['ones'] for r in results)
        attempts = sum(r['pair_attempts'] for r in results)
        rejections = sum(r['rejections'] for r in results)
        print(f'wrote {images} images in {folders} folder(s) to {directory}: label 1 {ones / images:.1%}, '
              f'{attempts / images:.2f} target pairs drawn per image, {rejections} image(s) redrawn by the '
              f'connectivity check; {seconds:.1f} s ({images / max(seconds, 1e-9):.0f} images/s)', flush=True)
    return directory


# --------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(description='Generate Pathfinder images in the LRA layout '
                                       '(<output_dir>/pathfinder<res>/<difficulty dir>/{imgs,metadata}).')
    parser.add_argument('--output_dir', metavar='DIR', required=True,
                        help='directory that gets pathfinder<res>/ (required)')
    parser.add_argument('--resolution', type=int, choices=RESOLUTIONS, default=32,
                        help='image side in pixels: 32 (Pathfinder) or 128 (Path-X) (default: %(default)s)')
    parser.add_argument('--difficulty', choices=tuple(DIFFICULTY_DIRS), default='hard',
                        help='paths of 6, 9 or 14 paddles (default: %(default)s, as LRA)')
    parser.add_argument('--count', metavar='INT', type=integer_at_least(1), required=True,
                        help='number of images (required)')
    parser.add_argument('--seed', metavar='INT', type=integer_at_least(0), default=0,
                        help='random seed; the same seed gives the same images (default: %(default)s)')
    parser.add_argument('--workers', metavar='INT', type=integer_at_least(1), default=None,
                        help='processes (default: 1 below 2000 images, else one per CPU)')
    args = parser.parse_args(argv)
    return run_generator(parser.prog, lambda: write_dataset(args.output_dir, args.resolution, args.difficulty,
                                                            args.count, args.seed, args.workers))


if __name__ == '__main__':
    sys.exit(main())
