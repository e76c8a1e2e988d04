"""Named metric conventions: how [0, 1] arrays are scaled, how sources combine, which variant a name means.

- `standard`: the convention of the widely used fusion evaluation toolboxes (VIFB, Zhang et al. 2020;
  the Python evaluators of recent MMIF papers): images as 8-bit gray levels (round(255 x)), log base
  2, MI / SSIM / VIF summed over the two sources, PSNR from the mean MSE with peak 255, FMI on pixels.
- `clinicalfmamba`: what the ClinicalFMamba table computed (`docs/metrics.md`): PSNR as the mean of
  PSNR(F,A) and PSNR(F,B) with data range 1, SSIM averaged on [0, 1], EN_unique on floats, FSIM on
  [0, 1] with 6 orientations and cv2 Scharr gradients, FMI on 8-bit edges with 3x3 windows. Names
  the paper did not report fall back to the standard convention.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from neurofuse.errors import UsageError


@dataclass(frozen=True)
class Convention:
    """How one metric sees its inputs: arrays are multiplied by `scale`, rounded if `quantize`."""

    scale: float = 255.0
    quantize: bool = True
    options: Any = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class Preset:
    """A named set of conventions plus the default metric lists for 2D and 3D inputs."""

    name: str
    description: str
    conventions: Any
    default_2d: tuple[str, ...]
    default_3d: tuple[str, ...]
    fallback: Convention = Convention()

    def convention(self, metric: str) -> Convention:
        """The convention this preset uses for `metric`."""
        return self.conventions.get(metric, self.fallback)


ALL_2D = (
    "PSNR", "SSIM", "FMI", "FSIM", "EN", "EN_unique", "MI", "NMI", "Qabf", "Nabf", "VIF", "VIFF",
    "SCD", "CC", "SD", "SF", "AG", "MS_SSIM", "Qcb", "Qcv",
)
ALL_3D = ("PSNR", "SSIM", "MS_SSIM", "EN", "EN_unique", "MI", "NMI", "CC", "SCD", "SD", "SF", "AG")

_FLOAT01 = dict(scale=1.0, quantize=False)

_STANDARD = {
    "EN_unique": Convention(**_FLOAT01),
    "PSNR": Convention(options=MappingProxyType({"data_range": 255.0, "mode": "mse_mean"})),
    "SSIM": Convention(options=MappingProxyType({"data_range": 255.0, "how": "sum"})),
    "MS_SSIM": Convention(options=MappingProxyType({"data_range": 255.0, "how": "mean"})),
    "FMI": Convention(options=MappingProxyType({"feature": "pixel", "window": 3})),
    "VIFF": Convention(options=MappingProxyType({"data_range": 255.0})),
}

_CLINICAL = dict(_STANDARD)
_CLINICAL.update(
    {
        "PSNR": Convention(**_FLOAT01, options=MappingProxyType({"data_range": 1.0, "mode": "psnr_mean"})),
        "SSIM": Convention(**_FLOAT01, options=MappingProxyType({"data_range": 1.0, "how": "mean"})),
        "MS_SSIM": Convention(**_FLOAT01, options=MappingProxyType({"data_range": 1.0, "how": "mean"})),
        "FSIM": Convention(
            **_FLOAT01,
            options=MappingProxyType(
                {"orientations": 6, "sigma_onf": 0.5978, "gradient": "scharr_cv2", "pc_mode": "sum_orientations"}
            ),
        ),
        "FMI": Convention(options=MappingProxyType({"feature": "edge", "window": 3})),
    }
)

PRESETS: dict[str, Preset] = {
    "standard": Preset(
        "standard",
        "fusion-toolbox convention: 8-bit gray levels, bits, MI/SSIM/VIF summed over sources",
        MappingProxyType(_STANDARD),
        ALL_2D,
        ALL_3D,
    ),
    "clinicalfmamba": Preset(
        "clinicalfmamba",
        "ClinicalFMamba's table: PSNR/SSIM on [0,1] averaged over sources, EN over distinct floats",
        MappingProxyType(_CLINICAL),
        ("PSNR", "SSIM", "FMI", "FSIM", "EN", "EN_unique"),
        ("PSNR", "MS_SSIM", "EN", "EN_unique"),
    ),
}


def get_preset(name: str) -> Preset:
    """The preset called `name`, or a UsageError listing the known ones."""
    if name not in PRESETS:
        raise UsageError(f"unknown metric preset {name!r}; available: {', '.join(PRESETS)}")
    return PRESETS[name]
