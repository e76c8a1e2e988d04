"""Synthetic graded glioma cohorts in the BraTS 2019 layout, with a planted grade signal of known size.

The full BraTS set is not available here, so the HGG-vs-LGG pipeline is shown to learn a real signal on
brain phantoms: an ellipsoid brain (grey-matter shell, white matter, two ventricles) with smooth tissue
texture and noise, carrying one lesion (necrotic core, enhancing rim, oedema) at a random place and size.
The grade changes only two latent attributes, each drawn per case as

    a_m = effect * (y - 1/2) + N(0, 1),    y = 1 for HGG, 0 for LGG,

so `effect` is Cohen's d of each attribute between grades. `a_t2` sets the size of the necrotic core
(radius fraction of the tumour core; T2-bright, but iso to the rim in FLAIR, so visible in T2 only);
`a_flair` sets the width of a non-enhancing infiltration halo around the oedema that is hyperintense in
FLAIR only (T2 sees normal tissue there). Sizes rather than intensities carry the signal so that
per-volume intensity normalisation cannot move it. The two are independent, so the grade information
is split between T2 and FLAIR: an ideal reader of one attribute reaches AUC = Phi(d / sqrt 2), one
reading both AUC = Phi(d) (0.76 vs 0.84 at d = 1), which is what makes stacking or fusion able to help.
Lesion size, place, brain shape, intensity gain, texture and noise are nuisances independent of grade.

With `shuffle_labels` the images are made exactly as above but the written grades are a random
permutation of the true ones (same class counts): a classifier must then score at chance.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from neurofuse.errors import InputError, UsageError
from neurofuse.io import Image, write_text, write_volume_like

# Tissue intensities (arbitrary units, before gain/noise): t1, t1ce, t2, flair.
_TISSUE = {
    "wm": (0.75, 0.75, 0.35, 0.45),
    "gm": (0.55, 0.58, 0.50, 0.55),
    "csf": (0.20, 0.20, 1.00, 0.15),
    "oedema": (0.50, 0.52, 0.70, 0.80),
    "rim": (0.45, 1.00, 0.55, 0.70),
    "core": (0.30, 0.30, 0.95, 0.70),  # necrosis: T2-bright, FLAIR like the rim (invisible there)
    "halo_flair": 0.66,  # infiltration halo: FLAIR only; T2/T1 see normal tissue
}
_IMAGE_MODS = ("t1", "t1ce", "t2", "flair")
NECROSIS_BASE, NECROSIS_PER_SD = 0.55, 0.15  # necrosis radius / core radius = base + per_sd * a_t2
HALO_BASE, HALO_PER_SD = 0.5, 0.25  # FLAIR halo width / oedema radius = base + per_sd * a_flair
TRAINING_DIR = "MICCAI_BraTS_2019_Data_Training"


@dataclass(frozen=True)
class SynthConfig:
    """A synthetic cohort's settings (all recorded in the cohort's `synthetic.json`).

    Args:
        cases: number of cases.
        size: edge of the cubic volumes (voxels).
        effect: Cohen's d of each grade attribute (T2 necrosis, FLAIR halo) between HGG and LGG.
        seed: random seed; the same config always gives the same cohort.
        hgg_fraction: share of HGG cases (rounded).
        shuffle_labels: write a random permutation of the grades (null cohort).
        noise: standard deviation of the Rician noise relative to white matter T2.
    """

    cases: int = 60
    size: int = 64
    effect: float = 1.0
    seed: int = 0
    hgg_fraction: float = 0.5
    shuffle_labels: bool = False
    noise: float = 0.02

    def __post_init__(self) -> None:
        if self.cases < 2:
            raise UsageError(f"--cases must be at least 2, got {self.cases}")
        if self.size < 16:
            raise UsageError(f"--size must be at least 16, got {self.size}")
        if not 0.0 < self.hgg_fraction < 1.0:
            raise UsageError(f"--hgg-fraction must be in (0, 1), got {self.hgg_fraction}")
        if self.effect < 0:
            raise UsageError(f"--effect must be >= 0, got {self.effect}")


def ideal_auc(effect: float, n_attributes: int) -> float:
    """AUC of the ideal reader of `n_attributes` independent attributes, each with Cohen's d `effect`."""
    d = effect * math.sqrt(n_attributes)
    return 0.5 * (1.0 + math.erf(d / 2.0))  # Phi(d / sqrt 2)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std smooth random field (Gaussian-filtered white noise)."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return (f - f.mean()) / (f.std() + 1e-8)


def _blob(grid: tuple[np.ndarray, ...], centre: np.ndarray, radius: float, wobble: np.ndarray) -> np.ndarray:
    """Mask of a sphere of `radius` around `centre` whose surface is displaced by `wobble` (same grid)."""
    r = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)))
    return r <= radius * (1.0 + 0.25 * wobble)


def make_case(rng: np.random.Generator, cfg: SynthConfig, hgg: bool) -> tuple[dict[str, np.ndarray], dict]:
    """One phantom: images (t1, t1ce, t2, flair; float32, background 0), seg (uint8 BraTS labels
    1 necrosis, 2 oedema, 4 enhancing) and its latent attributes."""
    n = cfg.size
    grid = np.meshgrid(*[(np.arange(n, dtype=np.float32) + 0.5) / n - 0.5] * 3, indexing="ij")
    axes = np.array([0.36, 0.42, 0.34]) * rng.uniform(0.92, 1.05, 3)
    centre = rng.uniform(-0.02, 0.02, 3)
    ell = sum(((g - c) / a) ** 2 for g, c, a in zip(grid, centre, axes, strict=True))
    brain = ell <= 1.0
    wm = ell <= rng.uniform(0.62, 0.72)
    vent = np.zeros_like(brain)
    for side in (-1, 1):
        vc = centre + np.array([side * 0.05, 0.02, 0.03])
        va = np.array([0.035, 0.12, 0.06]) * rng.uniform(0.95, 1.05)
        vent |= sum(((g - c) / a) ** 2 for g, c, a in zip(grid, vc, va, strict=True)) <= 1.0

    # Lesion inside the brain, in one hemisphere, away from the midline.
    while True:
        u = rng.uniform(-1, 1, 3)
        if np.sum(u**2) <= 1:
            break
    u[0] = np.sign(u[0] or 1.0) * max(abs(u[0]), 0.35)
    lc = centre + 0.55 * u * axes
    y = 1.0 if hgg else 0.0
    a_t2 = cfg.effect * (y - 0.5) + rng.standard_normal()
    a_flair = cfg.effect * (y - 0.5) + rng.standard_normal()
    r_core = rng.uniform(0.08, 0.10)
    r_oedema = 1.5 * r_core
    necrosis_frac = float(np.clip(NECROSIS_BASE + NECROSIS_PER_SD * a_t2, 0.1, 0.9))
    halo_frac = float(np.clip(HALO_BASE + HALO_PER_SD * a_flair, 0.0, 1.2))
    wobble = _smooth_noise(rng, (n, n, n), sigma=n / 12)
    halo = _blob(grid, lc, r_oedema * (1.0 + halo_frac), wobble) & brain
    oedema = _blob(grid, lc, r_oedema, wobble) & brain
    rim = _blob(grid, lc, r_core, wobble) & brain
    core = _blob(grid, lc, necrosis_frac * r_core, wobble) & brain
    labels = np.zeros((n, n, n), dtype=np.uint8)
    labels[halo | oedema] = 2
    labels[rim] = 4
    labels[core] = 1

    images: dict[str, np.ndarray] = {}
    texture = _smooth_noise(rng, (n, n, n), sigma=max(n / 32, 1.0))
    for m, mod in enumerate(_IMAGE_MODS):
        vol = np.full((n, n, n), _TISSUE["gm"][m], dtype=np.float32)
        vol[wm] = _TISSUE["wm"][m]
        vol[vent] = _TISSUE["csf"][m]
        if mod == "flair":
            vol[halo] = _TISSUE["halo_flair"]
        vol[oedema] = _TISSUE["oedema"][m]
        vol[rim] = _TISSUE["rim"][m]
        vol[core] = _TISSUE["core"][m]
        vol = ndimage.gaussian_filter(vol, 0.6)  # partial volume at tissue borders
        vol *= 1.0 + 0.04 * texture
        sd = cfg.noise * _TISSUE["wm"][2]
        vol = np.hypot(vol + sd * rng.standard_normal(vol.shape), sd * rng.standard_normal(vol.shape))
        vol *= rng.uniform(0.85, 1.15) * 1000.0  # per-scan gain, raw-like units
        vol[~brain] = 0.0
        images[mod] = vol.astype(np.float32)
    images["seg"] = labels
    return images, {"a_t2": float(a_t2), "a_flair": float(a_flair), "necrosis_fraction": necrosis_frac,
                    "halo_fraction": halo_frac}


def write_cohort(out: str | Path, cfg: SynthConfig, overwrite: bool = False, progress: bool = True) -> Path:
    """Write a synthetic cohort under `out/MICCAI_BraTS_2019_Data_Training/` (HGG/LGG folders, int16
    images, uint8 seg, name_mapping.csv, synthetic.json with the ground truth); returns that folder."""
    root = Path(out) / TRAINING_DIR
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise UsageError(f"{root}: already exists (use `overwrite=True`)")
        if not (root / "synthetic.json").is_file():
            raise UsageError(f"{root}: not a synthetic cohort (no synthetic.json); refusing to overwrite it")
        shutil.rmtree(root)
    rng = np.random.default_rng(cfg.seed)
    n_hgg = int(round(cfg.hgg_fraction * cfg.cases))
    true = np.array([1] * n_hgg + [0] * (cfg.cases - n_hgg))
    rng.shuffle(true)
    shown = np.random.default_rng([cfg.seed, 1]).permutation(true) if cfg.shuffle_labels else true
    spacing = 240.0 / cfg.size
    affine = np.diag([spacing, spacing, spacing, 1.0])
    records = []
    for i in tqdm(range(cfg.cases), desc="synth-brats", unit="case", disable=not progress):
        cid = f"BraTS19_SYN_{i:04d}_1"
        grade = "HGG" if shown[i] else "LGG"
        vols, attrs = make_case(rng, cfg, hgg=bool(true[i]))
        folder = root / grade / cid
        folder.mkdir(parents=True, exist_ok=True)
        for mod, vol in vols.items():
            arr = vol if mod == "seg" else np.round(vol).astype(np.int16)
            path = folder / f"{cid}_{mod}.nii.gz"
            write_volume_like(path, Image(arr, path, "nifti", affine=affine), overwrite=True)
        records.append({"id": cid, "grade": grade, "true_grade": "HGG" if true[i] else "LGG", **attrs})
    rows = "".join(f"{r['grade']},{r['id']}\n" for r in records)
    write_text(root / "name_mapping.csv", "Grade,BraTS_2019_subject_ID\n" + rows)
    meta = {
        "config": asdict(cfg),
        "ideal_auc": {"t2": ideal_auc(cfg.effect, 1), "flair": ideal_auc(cfg.effect, 1),
                      "both": ideal_auc(cfg.effect, 2)},
        "attributes": {"necrosis_fraction": [NECROSIS_BASE, NECROSIS_PER_SD],
                       "halo_fraction": [HALO_BASE, HALO_PER_SD]},
        "cases": records,
    }
    write_text(root / "synthetic.json", json.dumps(meta, indent=1) + "\n")
    return root


def read_truth(root: str | Path) -> list[dict]:
    """The per-case ground truth recorded in a synthetic cohort's `synthetic.json`."""
    path = Path(root) / "synthetic.json"
    if not path.is_file():
        raise InputError(f"{path}: not a synthetic cohort (no synthetic.json)")
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)["cases"]

