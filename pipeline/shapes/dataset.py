"""Procedural coloured shapes with captions, rendered on the fly (no files, no downloads).

Each sample is one shape (circle, square or triangle) in one of six colours, at a random
position and size, on a white or black background, captioned as
"a red circle on a white background". A few colour-shape pairs never appear in training
(`HELD_OUT`), so evaluation can tell generalisation from memorisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SIZE = 32  # pixels per side: the model's native resolution

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 135, 20),
    "yellow": (240, 220, 30),
    "green": (30, 160, 60),
    "blue": (30, 70, 220),
    "purple": (140, 50, 190),
}
SHAPES = ("circle", "square", "triangle")
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"white": (255, 255, 255), "black": (0, 0, 0)}

# Colour-shape pairs the model never sees in training (on either background): each colour
# and each shape still appears, only these combinations are new at evaluation.
HELD_OUT = frozenset({("orange", "triangle"), ("blue", "circle"), ("purple", "square")})

# Shape extent in pixels (the bounding box side) and the margin kept from the border.
MIN_EXTENT, MAX_EXTENT, MARGIN = 12, 22, 2
_SUPERSAMPLE = 4  # sub-pixels per side for anti-aliased edges


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    background: str
    cx: float = SIZE / 2
    cy: float = SIZE / 2
    extent: float = 16.0

    @property
    def caption(self) -> str:
        article = "an" if self.colour[0] in "aeiou" else "a"
        return f"{article} {self.colour} {self.shape} on a {self.background} background"

    @property
    def held_out(self) -> bool:
        return (self.colour, self.shape) in HELD_OUT


def all_combinations() -> list[tuple[str, str, str]]:
    """Every (colour, shape, background), in a fixed order."""
    return [(c, s, b) for c in COLOURS for s in SHAPES for b in BACKGROUNDS]


def training_combinations() -> list[tuple[str, str, str]]:
    return [(c, s, b) for c, s, b in all_combinations() if (c, s) not in HELD_OUT]


def vocabulary() -> list[str]:
    """Every word a caption can hold."""
    words = {"a", "an", "on", "background"} | set(COLOURS) | set(SHAPES) | set(BACKGROUNDS)
    return sorted(words)


def random_scenes(rng: np.random.Generator, count: int, include_held_out: bool = False) -> list[Scene]:
    combos = all_combinations() if include_held_out else training_combinations()
    picks = rng.integers(len(combos), size=count)
    extents = rng.uniform(MIN_EXTENT, MAX_EXTENT, size=count)
    scenes = []
    for pick, extent, (u, v) in zip(picks, extents, rng.uniform(size=(count, 2))):
        low, high = MARGIN + extent / 2, SIZE - MARGIN - extent / 2
        colour, shape, background = combos[pick]
        scenes.append(Scene(colour, shape, background, low + u * (high - low), low + v * (high - low), float(extent)))
    return scenes


def coverage(scenes: list[Scene]) -> np.ndarray:
    """The fraction of each pixel a scene's shape covers, (n, SIZE, SIZE) float32, vectorised
    over the batch with super-sampled edges."""
    fine = SIZE * _SUPERSAMPLE
    grid = (np.arange(fine, dtype=np.float32) + 0.5) / _SUPERSAMPLE
    x, y = grid[None, None, :], grid[None, :, None]
    cx = np.array([s.cx for s in scenes], np.float32)[:, None, None]
    cy = np.array([s.cy for s in scenes], np.float32)[:, None, None]
    half = np.array([s.extent / 2 for s in scenes], np.float32)[:, None, None]
    kind = np.array([SHAPES.index(s.shape) for s in scenes])[:, None, None]
    circle = (x - cx) ** 2 + (y - cy) ** 2 <= half**2
    square = (np.abs(x - cx) <= half) & (np.abs(y - cy) <= half)
    # An upright isosceles triangle: apex at the top centre, base along the bottom edge.
    top = cy - half
    triangle = (y <= cy + half) & (y >= top) & (np.abs(x - cx) <= (y - top) / 2)
    inside = np.where(kind == 0, circle, np.where(kind == 1, square, triangle))
    return inside.reshape(len(scenes), SIZE, _SUPERSAMPLE, SIZE, _SUPERSAMPLE).mean(axis=(2, 4), dtype=np.float32)


def render(scenes: list[Scene]) -> np.ndarray:
    """RGB images for the scenes, (n, SIZE, SIZE, 3) uint8."""
    cover = coverage(scenes)[..., None]
    colour = np.array([COLOURS[s.colour] for s in scenes], np.float32)[:, None, None, :]
    background = np.array([BACKGROUNDS[s.background] for s in scenes], np.float32)[:, None, None, :]
    return np.round(background * (1 - cover) + colour * cover).astype(np.uint8)
