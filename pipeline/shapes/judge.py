"""Read colour, shape and background back from an image, to check a model's pictures mean
what their prompt said.

The measure is deliberately simple and is checked against the renderer itself
(tests/test_shapes.py): it reads every rendered scene right.
  background  the median colour of the outermost ring of pixels, nearest of white/black;
  foreground  pixels far from that background colour; only the largest 4-connected blob counts,
              and a blob larger than any drawn shape is none;
  colour      the median colour of the blob's pixels, nearest palette colour;
  shape       the blob's bounding-box fill ratio: square ~1.0, circle ~0.79, triangle ~0.5.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from pipeline.shapes.dataset import BACKGROUNDS, COLOURS, MAX_EXTENT

# A pixel is foreground when some channel differs from the background by more than this.
_FOREGROUND_DIFF = 90
# A blob smaller than this share of the image is no shape at all.
_MIN_AREA_SHARE = 0.03
# A blob whose box is wider or taller than any drawn shape (plus anti-aliasing) is not a shape:
# noise, or a smear over the whole picture.
_MAX_SIDE = MAX_EXTENT + 4
_SQUARE_FILL, _CIRCLE_FILL = 0.93, 0.66  # fill ratio at or above: square; above: circle


@dataclass(frozen=True)
class Reading:
    colour: str  # a palette colour, or "none"
    shape: str  # circle | square | triangle | none
    background: str  # white | black
    fill: float  # the blob's bounding-box fill ratio (0 with no blob)
    area: int  # the blob's pixel count
    rgb: tuple[float, float, float] | None = None  # the blob's median colour (None: no shape)

    def matches(self, colour: str, shape: str, background: str) -> bool:
        return (self.colour, self.shape, self.background) == (colour, shape, background)


def _nearest(rgb: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> str:
    names = list(palette)
    distances = np.linalg.norm(np.array([palette[n] for n in names], np.float32) - rgb, axis=1)
    return names[int(np.argmin(distances))]


def _largest_blob(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a boolean mask (images are 32x32: a plain BFS)."""
    height, width = mask.shape
    labels = np.zeros(mask.shape, np.int32)
    best, best_size, label = 0, 0, 0
    for start in zip(*np.nonzero(mask)):
        if labels[start]:
            continue
        label += 1
        labels[start] = label
        queue, size = deque([start]), 0
        while queue:
            y, x = queue.popleft()
            size += 1
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = label
                    queue.append((ny, nx))
        if size > best_size:
            best, best_size = label, size
    return labels == best if best else np.zeros_like(mask)


def nearest_colour(rgb: np.ndarray) -> str:
    return _nearest(rgb, COLOURS)


def foreground(pixels: np.ndarray, background: str) -> np.ndarray:
    """Which pixels (float RGB, any leading shape) stand apart from the background colour."""
    return np.abs(pixels - np.array(BACKGROUNDS[background], np.float32)).max(axis=-1) > _FOREGROUND_DIFF


def background_of(image: np.ndarray) -> str:
    ring = np.concatenate([image[0], image[-1], image[1:-1, 0], image[1:-1, -1]]).astype(np.float32)
    return _nearest(np.median(ring, axis=0), BACKGROUNDS)


def read_image(image: np.ndarray) -> Reading:
    """Judge one RGB uint8 image (H, W, 3)."""
    pixels = np.asarray(image, dtype=np.float32)[..., :3]
    background = background_of(pixels)
    blob = _largest_blob(foreground(pixels, background))
    area = int(blob.sum())
    if area < _MIN_AREA_SHARE * blob.size:
        return Reading("none", "none", background, 0.0, area)
    rows, cols = np.nonzero(blob)
    height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    fill = area / float(height * width)
    if max(height, width) > _MAX_SIDE:
        return Reading("none", "none", background, fill, area)
    shape = "square" if fill >= _SQUARE_FILL else "circle" if fill > _CIRCLE_FILL else "triangle"
    rgb = np.median(pixels[blob], axis=0)
    return Reading(nearest_colour(rgb), shape, background, fill, area, tuple(float(c) for c in rgb))
