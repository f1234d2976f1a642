"""The offline `builtin` background remover (§5.3's backends need a network or a model; this one
needs neither): a border-connected flood fill with a colour tolerance.

1. The background colours are estimated from the image border: the border (a closed walk around
   the picture) is cut into segments; a segment whose pixels mostly lie within `tolerance` of its
   median is "uniform". Uniform neighbouring segments with close medians form a group (so a
   gradient backdrop is followed along the border, while a subject crossing the border, a jump
   in colour, starts another group), as do same-coloured segments apart. The group covering the
   most of the border is the background; its segment medians are the background colours.
2. A pixel is background-like when it lies within `tolerance` (Euclidean RGB distance) of one of
   those colours, or is already fully transparent.
3. Only background-like pixels 4-connected to the border are background: the connected components
   of the background-like mask are labelled over its horizontal runs (runs of adjacent rows that
   overlap are joined with a vectorised union-find), and the components holding a border pixel are
   kept. A hole of the background colour inside the subject stays opaque; a subject that touches
   no border is kept whole.
4. Background gets alpha 0; a subject pixel next to the background gets the share of subject
   pixels in its 3x3 neighbourhood as alpha (a 1 px soft edge); any alpha the input already had
   is kept where lower. The colours under the alpha are left as they were.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from kroma.imaging.encode import decode, encode, normalize

DEFAULT_TOLERANCE = 24.0
MAX_COLOURS = 32  # the most background colours compared per pixel (beyond: an even subset)
_UNIFORM_SHARE = 0.5  # share of a segment's pixels near its median for it to count as uniform
_END = 4  # pixels at each end of a segment compared with the neighbouring segment's


def remove_background(data: bytes, *, fmt: str = "png", tolerance: float = DEFAULT_TOLERANCE) -> bytes:
    """The image in `data` with its border-connected background made transparent, as `fmt` (png
    and webp keep the alpha; jpg flattens the result onto white). ValueError when `data` is not an
    image, `fmt` is not png|jpg|jpeg|webp or `tolerance` is negative or not finite."""
    if not (math.isfinite(tolerance) and tolerance >= 0.0):
        raise ValueError(f"background tolerance must be a finite number >= 0, got {tolerance}")
    image = normalize(decode(data)).convert("RGBA")
    rgba = np.asarray(image, dtype=np.uint8)
    alpha = background_alpha(rgba[..., :3], rgba[..., 3], tolerance)
    out = rgba.copy()
    out[..., 3] = alpha
    return encode(Image.fromarray(out, "RGBA"), fmt)


def background_alpha(
    rgb: np.ndarray, alpha: np.ndarray | None = None, tolerance: float = DEFAULT_TOLERANCE
) -> np.ndarray:
    """The alpha channel (uint8, H x W) that cuts the border-connected background out of `rgb`
    (uint8, H x W x 3), given the image's own alpha (None: opaque)."""
    height, width = rgb.shape[:2]
    if alpha is None:
        alpha = np.full((height, width), 255, dtype=np.uint8)
    if height == 0 or width == 0:
        return alpha.copy()
    colours = background_colours(rgb, alpha, tolerance)
    similar = similar_mask(rgb, colours, tolerance) | (alpha == 0)
    background = border_connected(similar)
    return np.minimum(soft_edge(background), alpha)


def _perimeter(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of the border pixels, once each, walking clockwise from (0, 0)."""
    ys = [np.zeros(width, dtype=np.intp), np.arange(1, height, dtype=np.intp)]
    xs = [np.arange(width, dtype=np.intp), np.full(height - 1, width - 1, dtype=np.intp)]
    if height > 1 and width > 1:
        ys += [np.full(width - 1, height - 1, dtype=np.intp), np.arange(height - 2, 0, -1, dtype=np.intp)]
        xs += [np.arange(width - 2, -1, -1, dtype=np.intp), np.zeros(height - 2, dtype=np.intp)]
    return np.concatenate(ys), np.concatenate(xs)


def _distance(colours: np.ndarray, colour: np.ndarray) -> np.ndarray:
    return np.sqrt(((colours - colour) ** 2).sum(axis=-1))


def _continues(
    tail: np.ndarray, median: np.ndarray, head: np.ndarray, next_median: np.ndarray, tolerance: float
) -> bool:
    """Whether a segment runs on smoothly into the next: its last pixels and the next one's first
    pixels are close, and each is typical of its own segment (not a subject crossing the joint)."""
    return bool(
        _distance(tail, head) <= tolerance
        and _distance(tail, median) <= tolerance
        and _distance(head, next_median) <= tolerance
    )


def _group(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def background_colours(rgb: np.ndarray, alpha: np.ndarray, tolerance: float) -> np.ndarray:
    """The estimated background colours (K x 3 float32, K >= 0) from the image border: the border
    walk is cut into up to 64 segments; a segment is uniform when at least half its pixels lie
    within `tolerance` of its median. Uniform segments are grouped: neighbours along the border
    that run on smoothly (the last pixels of one within `tolerance` of the first of the next, and
    each typical of its segment: a gradient is followed step by step, however steep), and any two
    whose medians are within `tolerance / 2` (one backdrop split by a subject touching the border).
    The group covering the most border pixels is the background; its medians (merged when within
    `tolerance / 2`) are the colours. No uniform segment: the median of the whole border. Fully
    transparent border pixels take no part; none left: K = 0."""
    ys, xs = _perimeter(*rgb.shape[:2])
    opaque = alpha[ys, xs] > 0
    border = rgb[ys[opaque], xs[opaque]].astype(np.float32)
    if border.shape[0] == 0:
        return np.zeros((0, 3), dtype=np.float32)
    count = max(1, min(64, border.shape[0] // 16))
    segments = [part for part in np.array_split(border, count) if part.shape[0]]
    medians = np.array([np.median(part, axis=0) for part in segments], dtype=np.float32)
    uniform = [
        bool((_distance(part, median) <= tolerance).mean() >= _UNIFORM_SHARE)
        for part, median in zip(segments, medians, strict=True)
    ]
    members = [i for i, ok in enumerate(uniform) if ok]
    if not members:
        return np.median(border, axis=0).astype(np.float32).reshape(1, 3)
    n = len(segments)
    heads = np.array([np.median(part[:_END], axis=0) for part in segments], dtype=np.float32)
    tails = np.array([np.median(part[-_END:], axis=0) for part in segments], dtype=np.float32)
    closeness = _distance(medians[:, None, :], medians[None, :, :])
    parent = list(range(n))
    for i in members:
        j = (i + 1) % n  # the next segment along the border: joined where they meet smoothly
        if j != i and uniform[j] and _continues(tails[i], medians[i], heads[j], medians[j], tolerance):
            parent[_group(parent, j)] = _group(parent, i)
        for k in members:  # the same colour elsewhere on the border (a backdrop split by the subject)
            if k > i and closeness[i, k] <= tolerance / 2.0:
                parent[_group(parent, k)] = _group(parent, i)
    weights: dict[int, int] = {}
    for i in members:
        root = _group(parent, i)
        weights[root] = weights.get(root, 0) + segments[i].shape[0]
    chosen = max(weights, key=lambda root: (weights[root], -root))
    kept: list[np.ndarray] = []
    for i in members:
        if _group(parent, i) != chosen:
            continue
        if not kept or _distance(np.array(kept), medians[i]).min() > tolerance / 2.0:
            kept.append(medians[i])
    if len(kept) > MAX_COLOURS:  # a long gradient: keep colours spread evenly along the border
        picks = np.linspace(0, len(kept) - 1, MAX_COLOURS).round().astype(int)
        kept = [kept[i] for i in picks]
    return np.array(kept, dtype=np.float32).reshape(-1, 3)


def similar_mask(rgb: np.ndarray, colours: np.ndarray, tolerance: float) -> np.ndarray:
    """Pixels within `tolerance` (Euclidean RGB distance, inclusive) of any of `colours`."""
    similar = np.zeros(rgb.shape[:2], dtype=bool)
    if colours.shape[0] == 0:
        return similar
    limit = float(tolerance) ** 2
    channels = [rgb[..., i].astype(np.float32) for i in range(3)]
    for colour in colours:
        d2 = np.square(channels[0] - colour[0])
        d2 += np.square(channels[1] - colour[1])
        d2 += np.square(channels[2] - colour[2])
        similar |= d2 <= limit
    return similar


def _components(mask: np.ndarray) -> np.ndarray:
    """4-connected component labels of `mask` (int32, 0 off the mask). Labels the horizontal runs,
    then joins the runs of adjacent rows that share a column with a vectorised union-find (hook
    the larger root onto the smaller, then compress paths by pointer jumping, until no edge joins
    two roots)."""
    height, width = mask.shape
    previous = np.zeros((height, width), dtype=bool)
    previous[:, 1:] = mask[:, :-1]
    starts = mask & ~previous
    ids = np.cumsum(starts.ravel(), dtype=np.int32).reshape(height, width)
    runs = int(ids[-1, -1])
    ids[~mask] = 0
    both = mask[:-1] & mask[1:]
    upper, lower = ids[:-1], ids[1:]
    first = both.copy()  # one (upper run, lower run) pair per stretch of shared columns
    first[:, 1:] &= ~both[:, :-1] | (upper[:, 1:] != upper[:, :-1]) | (lower[:, 1:] != lower[:, :-1])
    a, b = upper[first], lower[first]
    parent = np.arange(runs + 1, dtype=np.int32)
    while a.size:
        root_a, root_b = parent[a], parent[b]
        apart = root_a != root_b
        if not apart.any():
            break
        a, b, root_a, root_b = a[apart], b[apart], root_a[apart], root_b[apart]
        np.minimum.at(parent, np.maximum(root_a, root_b), np.minimum(root_a, root_b))
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
    return parent[ids]


def border_connected(mask: np.ndarray) -> np.ndarray:
    """The pixels of `mask` 4-connected to a border pixel of `mask`."""
    labels = _components(mask)
    ys, xs = _perimeter(*mask.shape)
    keep = np.zeros(int(labels.max()) + 1, dtype=bool)
    keep[labels[ys, xs]] = True
    keep[0] = False
    return keep[labels]


def soft_edge(background: np.ndarray) -> np.ndarray:
    """Alpha from a background mask: 0 on the background, 255 inside the subject, and on the subject
    pixels touching the background the share of subject pixels in their 3x3 neighbourhood (edges
    replicated), rounded: a 1 px soft edge."""
    subject = (~background).astype(np.uint8)
    padded = np.pad(subject, 1, mode="edge")
    height, width = subject.shape
    total = np.zeros((height, width), dtype=np.uint8)
    for dy in range(3):
        for dx in range(3):
            total += padded[dy : dy + height, dx : dx + width]
    alpha = (total.astype(np.uint16) * 255 + 4) // 9
    alpha[background] = 0
    return alpha.astype(np.uint8)
