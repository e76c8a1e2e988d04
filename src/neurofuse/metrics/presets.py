"""Named metric conventions: how [0, 1] arrays are scaled, how sources combine, which variant a name means.

- `standard`: our recommended set, every entry named unambiguously (FMI_pixel and FMI_edge, Nabf
  (Petrovic) and Nabf_kumar, ...): 8-bit gray levels (round(255 x)), log base 2, MI / SSIM / VIF
  summed over the two sources, PSNR from the mean MSE with peak 255.
- `clinicalfmamba`: what the ClinicalFMamba table computed (`docs/metrics.md`): PSNR as the mean of
  PSNR(F,A) and PSNR(F,B) with data range 1, SSIM averaged on [0, 1], EN_unique on floats, FSIM on
  [0, 1] with 6 orientations and cv2 Scharr gradients, FMI on 8-bit edges with 3x3 windows. Names
  the paper did not report fall back to the standard convention. Its key names are stable (the
  trainer's validation logs them).
- `vifb`, `tang`, `cddfuse`: each reproduces one reference toolbox (VIFB's MATLAB metrics, Tang's
  Evaluation-for-Image-Fusion, CDDFuse's utils/Evaluator.py), including how it reads colour images;
  `tests/metrics/fixtures/toolbox_values.json` holds the values the toolboxes themselves computed.
"""

from __future__ import annotations

import inspect
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
    note: str = ""


@dataclass(frozen=True)
class Preset:
    """A named set of conventions plus the default metric lists for 2D and 3D inputs.

    gray: how colour (H, W, 3) inputs are turned into what the metrics see (`metrics.inputs`).
    """

    name: str
    description: str
    conventions: Any
    default_2d: tuple[str, ...]
    default_3d: tuple[str, ...]
    fallback: Convention = Convention()
    gray: str = "luma"

    def convention(self, metric: str) -> Convention:
        """The convention this preset uses for `metric`."""
        return self.conventions.get(metric, self.fallback)


ALL_2D = (
    "PSNR", "SSIM", "FMI_pixel", "FMI_edge", "FSIM", "EN", "MI", "NMI", "Qabf", "Nabf", "Nabf_kumar", "VIF",
    "VIFF", "SCD", "CC", "SD", "SF", "AG", "MS_SSIM", "Qcb", "Qcv", "CE", "EI", "MSE", "EN_unique",
)
ALL_3D = ("PSNR", "SSIM", "MS_SSIM", "EN", "MI", "NMI", "CC", "SCD", "SD", "SF", "AG", "CE", "MSE", "EN_unique")
# Flagged wherever they are printed: not comparable across output types.
FLAGS = {
    "EN_unique": "entropy over distinct float values: not comparable between float and 8-bit outputs",
}
FLAG_MARK = " †"


def flag_marked(metric: str) -> str:
    """The metric's name as tables print it: flagged ones (FLAGS) carry a dagger."""
    return metric + FLAG_MARK if metric in FLAGS else metric


def headline_order(metrics) -> list[str]:
    """Metric names with the flagged ones moved to the end: they are never headline columns."""
    metrics = list(metrics)
    return [m for m in metrics if m not in FLAGS] + [m for m in metrics if m in FLAGS]


def flag_notes(metrics) -> list[str]:
    """The footnotes under a table for the flagged metrics in it (`† EN_unique: ...`)."""
    names = set(metrics)
    return [f"† {m}: {FLAGS[m]}" for m in FLAGS if m in names]


def _c(note: str = "", scale: float = 255.0, quantize: bool = True, **options) -> Convention:
    return Convention(scale, quantize, MappingProxyType(options), note)


_FLOAT01 = dict(scale=1.0, quantize=False)

_STANDARD = {
    "EN_unique": _c(**_FLOAT01),
    "PSNR": _c(data_range=255.0, mode="mse_mean"),
    "SSIM": _c(data_range=255.0, how="sum"),
    "MS_SSIM": _c(data_range=255.0, how="mean"),
    "VIFF": _c(data_range=255.0),
}

_CLINICAL = dict(_STANDARD)
_CLINICAL.update(
    {
        "PSNR": _c(**_FLOAT01, data_range=1.0, mode="psnr_mean"),
        "SSIM": _c(**_FLOAT01, data_range=1.0, how="mean"),
        "MS_SSIM": _c(**_FLOAT01, data_range=1.0, how="mean"),
        "FSIM": _c(**_FLOAT01, orientations=6, sigma_onf=0.5978, gradient="scharr_cv2", pc_mode="sum_orientations"),
        "FMI": _c("edge features (as the paper's FMI)", feature="edge", window=3),
    }
)

_VIFB = {
    "EN": _c("metricsEntropy"),
    "CE": _c("metricsCross_entropy"),
    "MI": _c("metricsMutinf: each image min-max to 0-255 first", rescale=True, unit="nats"),
    "PSNR": _c("metricsPsnr: 'MSE' is sqrt(SSE)/N", data_range=255.0, mode="vifb"),
    "RMSE_vifb": _c("metricsRmse"),
    "SSIM": _c("metricsSsim", data_range=255.0, how="sum"),
    "Qabf": _c("metricsQabf (works on 255 x the levels)", strength_scale=255.0),
    "Qcb": _c("metricsQcb"),
    "Qcv": _c("metricsQcv (real part)"),
    "AG": _c("metricsAvg_gradient", mean_over="interior"),
    "EI": _c("metricsEdge_intensity"),
    "SD": _c("metricsVariance"),
    "SF": _c("metricsSpatial_frequency (colour images: the RGB planes side by side)", mean_over="pixels"),
}

_TANG = {
    "EN": _c("entropy (Image Processing Toolbox)"),
    "MI": _c("MI_evaluation: Hab.m's uint8 index saturates, levels 254 and 255 share a joint bin",
             joint_saturate=True),
    "SD": _c("SD_evaluation"),
    "SF": _c("SF_evaluation"),
    "PSNR": _c("PSNR_evaluation: 20 log10(255 / RMSE) with RMSE on [0, 1] (48.13 dB above peak 1)",
               **_FLOAT01, data_range=255.0, mode="mse_mean"),
    "MSE": _c("MSE_evaluation", **_FLOAT01),
    "VIF": _c("vifp_mscale(A, F) + vifp_mscale(B, F)"),
    "AG": _c("AG_evaluation", mean_over="interior"),
    "CC": _c("CC_evaluation"),
    "SCD": _c("analysis_SCD"),
    "Qabf": _c("analysis_Qabf"),
    "Nabf_tang_asrun": _c("analysis_nabf as analysis_Reference calls it"),
    "FMI_edge": _c("analysis_fmi default feature (the toolbox's FMI_pixel column)"),
    "FMI_dct": _c("analysis_fmi(..., 'dct')"),
    "FMI_wavelet": _c("analysis_fmi(..., 'wavelet') (the toolbox's FMI_w column: Wavelet Toolbox dwt2 'dmey')"),
    "SSIM": _c("0.5 ssim(F, A) + 0.5 ssim(F, B), MATLAB's ssim on 0-255 doubles (its default range 1 for doubles)",
               data_range=1.0, how="mean", variant="matlab"),
    "MS_SSIM_mef": _c("analysis_ms_ssim (the toolbox's MS_SSIM column)"),
}

_CDDFUSE = {
    "EN": _c("Evaluator.EN"),
    "SD": _c("Evaluator.SD"),
    "SF": _c("Evaluator.SF"),
    "MI": _c("Evaluator.MI (sklearn mutual_info_score)", unit="nats"),
    "SCD": _c("Evaluator.SCD"),
    "VIF": _c("Evaluator.VIFF: the pixel-domain VIF summed over sources (not Han's VIFF)"),
    "Qabf": _c("Evaluator.Qabf"),
    "SSIM": _c("Evaluator.SSIM: skimage defaults, float data_range 2", data_range=2.0, how="sum",
               variant="skimage_default"),
    "AG": _c("Evaluator.AG"),
    "CC": _c("Evaluator.CC"),
    "PSNR": _c("Evaluator.PSNR: peak max(F)", data_range="max_f", mode="mse_mean"),
    "MSE": _c("Evaluator.MSE (0-255)"),
}

PRESETS: dict[str, Preset] = {
    "standard": Preset(
        "standard",
        "our recommended set: 8-bit gray levels, bits, MI/SSIM/VIF summed over sources, unambiguous names",
        MappingProxyType(_STANDARD),
        tuple(m for m in ALL_2D if m != "EN_unique"),
        tuple(m for m in ALL_3D if m != "EN_unique"),
    ),
    "clinicalfmamba": Preset(
        "clinicalfmamba",
        "ClinicalFMamba's table: PSNR/SSIM on [0,1] averaged over sources, edge FMI, EN over distinct floats",
        MappingProxyType(_CLINICAL),
        ("PSNR", "SSIM", "FMI", "FSIM", "EN", "EN_unique"),
        ("PSNR", "MS_SSIM", "EN", "EN_unique"),
    ),
    **{
        name: Preset(name, desc, MappingProxyType(conv), tuple(conv), d3, gray=gray)
        for name, desc, conv, d3, gray in (
            ("vifb", "VIFB (Zhang, Ye & Xiao 2020) MATLAB metrics; colour images channel by channel, averaged",
             _VIFB, ("EN", "CE", "MI", "PSNR", "RMSE_vifb", "SSIM", "AG", "SD", "SF"), "per_channel"),
            ("tang", "Tang's Evaluation-for-Image-Fusion (SeAFusion) MATLAB metrics; colour via rgb2gray",
             _TANG, ("EN", "MI", "SD", "SF", "PSNR", "MSE", "AG", "CC", "SCD"), "rgb2gray"),
            ("cddfuse", "CDDFuse's utils/Evaluator.py (as test_MIF.py calls it); colour via cv2 BGR2GRAY, rounded",
             _CDDFUSE, ("EN", "SD", "SF", "MI", "SCD", "AG", "CC", "PSNR", "MSE"), "cv2_gray"),
        )
    },
}

_UNITS = {"EN": "bits", "MI": "bits", "CE": "bits", "EN_unique": "bits"}


def describe(metric: str, fn, conv: Convention) -> str:
    """One line naming a metric's convention: input range, how sources combine, units, data range, note."""
    params = {k: v.default for k, v in inspect.signature(fn).parameters.items() if v.default is not inspect._empty}
    params.update(conv.options)
    parts = ["8-bit levels" if conv.quantize and conv.scale == 255.0 else
             ("[0,1] floats" if conv.scale == 1.0 and not conv.quantize else f"x{conv.scale:g}")]
    if params.get("rescale"):
        parts[0] += ", min-max to 0-255"
    if "how" in params:
        parts.append(f"{params['how']} over sources")
    if metric in _UNITS or "unit" in params:
        parts.append(params.get("unit", _UNITS.get(metric, "bits")))
    if "data_range" in params:
        dr = params["data_range"]
        parts.append("peak max(F)" if dr == "max_f" else f"data range {dr:g}")
    for key in ("mode", "variant", "feature", "mean_over"):
        if key in params:
            parts.append(f"{key} {params[key]}")
    if conv.note:
        parts.append(conv.note)
    return "; ".join(parts)


def get_preset(name: str) -> Preset:
    """The preset called `name`, or a UsageError listing the known ones."""
    if name not in PRESETS:
        raise UsageError(f"unknown metric preset {name!r}; available: {', '.join(PRESETS)}")
    return PRESETS[name]
