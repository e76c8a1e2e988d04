"""How colour images reach the metrics: each toolbox turns RGB into gray its own way.

Arrays here are in [0, 1] (8-bit files divided by 255); colour arrays are (H, W, 3) RGB.

- 'luma': the Y channel of full-range BT.601 YCbCr, unrounded (neurofuse's reader, as PIL);
- 'rgb2gray': MATLAB/Octave `rgb2gray` on uint8 (weights 0.298936, 0.587043, 0.114021, rounded half
  away from zero to uint8), as Tang's Evaluation-for-Image-Fusion reads files;
- 'cv2_gray': `cv2.cvtColor(float32 BGR, COLOR_BGR2GRAY)` then `np.round` (weights 0.299, 0.587,
  0.114 in float32, half to even), as CDDFuse's `image_read_cv2(path, 'GRAY')`;
- 'per_channel': no conversion; VIFB computes every metric on each RGB channel of the colour images
  (a gray source is used with every channel) and averages over channels.
"""

from __future__ import annotations

import numpy as np

from neurofuse.errors import InputError, UsageError

GRAY_CONVERSIONS = ("luma", "rgb2gray", "cv2_gray", "per_channel")


def is_color(x: np.ndarray) -> bool:
    """True for a (H, W, 3) array."""
    return x.ndim == 3 and x.shape[-1] == 3


def to_gray(x: np.ndarray, how: str) -> np.ndarray:
    """Gray [0, 1] image of a (H, W, 3) RGB array in [0, 1] by the conversion `how`; gray input is returned."""
    x = np.asarray(x, dtype=np.float64)
    if not is_color(x):
        return x
    if how == "luma":
        return (0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]).clip(0.0, 1.0)
    rgb8 = np.round(x * 255.0)
    if how == "rgb2gray":
        g = (rgb8 / 255.0) @ np.array([0.298936, 0.587043, 0.114021]) * 255.0
        return np.clip(np.floor(g + 0.5), 0, 255) / 255.0
    if how == "cv2_gray":
        c = rgb8.astype(np.float32)
        g = c[..., 2] * np.float32(0.114) + c[..., 1] * np.float32(0.587) + c[..., 0] * np.float32(0.299)
        return np.round(g).astype(np.float64) / 255.0
    raise UsageError(f"gray conversion must be one of {', '.join(GRAY_CONVERSIONS[:3])}, got {how!r}")


def channel_triplets(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """VIFB's per-channel triplets: channel k of every colour image, a gray image repeated."""
    arrs = [np.asarray(x, dtype=np.float64) for x in (a, b, f)]
    n = max(x.shape[-1] if is_color(x) else 1 for x in arrs)
    if n == 1:
        return [tuple(arrs)]
    if not is_color(arrs[2]):
        raise InputError("per-channel metrics need a colour fused image when a source is colour")
    return [tuple(x[..., k] if is_color(x) else x for x in arrs) for k in range(n)]
