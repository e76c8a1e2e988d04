"""BraTS readers and preprocessing for the 3D fusion and HGG-vs-LGG experiments.

Two official layouts are read:

- BraTS 2019/2020: `MICCAI_BraTS_2019_Data_Training/{HGG,LGG}/<ID>/<ID>_{t1,t1ce,t2,flair,seg}.nii.gz`;
  the grade comes from the HGG/LGG folder or, failing that, from a `name_mapping.csv` found next to
  or above the data (or in a `metadata/` folder there).
- BraTS 2021/2023: `<ID>/<ID>-{t1n,t1c,t2w,t2f,seg}.nii.gz` (no grade).

Modalities are named canonically `t1, t1ce, t2, flair, seg` whichever layout they came from. Volumes
stay in NIfTI voxel order (i, j, k); axial slices are taken along k, the third axis, as in both releases.
Preprocessing puts every case on the classifier's grid: brain bounding box, crop/pad or resample to
`size`^3, per-volume normalisation to [0, 1]; results are cached on disk as npz keyed by case + settings.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from neurofuse.errors import InputError
from neurofuse.io import Image, atomic_write_path, normalize01, read_image

MODALITIES = ("t1", "t1ce", "t2", "flair", "seg")
GRADES = ("HGG", "LGG")
_SUFFIX_2019 = {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair", "seg": "seg"}
_SUFFIX_2023 = {"t1n": "t1", "t1c": "t1ce", "t2w": "t2", "t2f": "flair", "seg": "seg"}
_NII = re.compile(r"^(?P<id>.+?)(?P<sep>[_-])(?P<mod>[a-z0-9]+)\.nii(\.gz)?$")
_MAX_DEPTH = 4
_BRATS_2012 = re.compile(r"^BRATS_(?P<grade>HG|LG)\d+$")


@dataclass(frozen=True)
class BratsCase:
    """One BraTS case: its id, grade ("HGG", "LGG" or None when unknown) and canonical modality paths."""

    id: str
    grade: str | None
    paths: dict[str, Path] = field(hash=False)
    layout: str = "2019"

    @property
    def label(self) -> int:
        """1 for HGG, 0 for LGG; InputError when the grade is unknown."""
        if self.grade is None:
            raise InputError(f"{self.id}: no grade (not under HGG/LGG and not in name_mapping.csv)")
        return int(self.grade == "HGG")

    def path(self, modality: str) -> Path:
        """The file of `modality`, or InputError naming the case folder when it is missing."""
        if modality not in self.paths:
            folder = next(iter(self.paths.values())).parent if self.paths else self.id
            raise InputError(f"{folder}: case {self.id} has no {modality} volume")
        return self.paths[modality]


def _case_files(folder: Path) -> tuple[dict[str, Path], str] | None:
    """Canonical modality -> file for a case folder whose files are named `<folder>{_,-}<mod>.nii[.gz]`."""
    found: dict[str, Path] = {}
    layout = "2019"
    for f in folder.iterdir():
        m = _NII.match(f.name)
        if not m or m["id"] != folder.name:
            continue
        table = _SUFFIX_2019 if m["sep"] == "_" else _SUFFIX_2023
        if m["mod"] in table:
            found[table[m["mod"]]] = f
            layout = "2019" if m["sep"] == "_" else "2023"
    return (found, layout) if found else None


def read_name_mapping(path: Path) -> dict[str, str]:
    """Subject id -> grade from a BraTS `name_mapping.csv` (every `*subject_ID` column is indexed)."""
    mapping: dict[str, str] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            grade = (row.get("Grade") or "").strip()
            if grade not in GRADES:
                continue
            for key, val in row.items():
                if key and key.endswith("subject_ID") and val and val != "NA":
                    mapping[val.strip()] = grade
    return mapping


def _find_mappings(root: Path) -> dict[str, str]:
    """Grades from every name_mapping.csv under `root` (a few levels) and in its ancestors."""
    files: list[Path] = []
    for base in [root, *list(root.parents)[:3]]:
        files += [p for p in (base / "name_mapping.csv", base / "metadata" / "name_mapping.csv") if p.is_file()]
    for dirpath, dirnames, filenames in os.walk(root):
        if len(Path(dirpath).relative_to(root).parts) >= _MAX_DEPTH:
            dirnames.clear()
        if "name_mapping.csv" in filenames:
            files.append(Path(dirpath) / "name_mapping.csv")
    mapping: dict[str, str] = {}
    for f in dict.fromkeys(files):
        mapping.update(read_name_mapping(f))
    return mapping


def discover(root: str | Path, require: Sequence[str] = ()) -> list[BratsCase]:
    """All BraTS cases under `root`, which may be the data folder, a grade folder, a case folder or above.

    Cases are sorted by id. `require` lists modalities every case must have (InputError otherwise).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise InputError(f"{root}: not a folder")
    root = root.resolve()
    mapping = _find_mappings(root)
    cases: dict[str, BratsCase] = {}
    for dirpath, dirnames, _ in os.walk(root, followlinks=True):
        folder = Path(dirpath)
        depth = len(folder.relative_to(root).parts)
        if depth >= _MAX_DEPTH:
            dirnames.clear()
        dirnames.sort()
        got = _case_files(folder)
        if got is None:
            continue
        dirnames.clear()
        paths, layout = got
        grade = folder.parent.name.upper() if folder.parent.name.upper() in GRADES else mapping.get(folder.name)
        if grade is None and (m := _BRATS_2012.match(folder.name)):  # BRATS 2012 names carry the grade
            grade = f"{m['grade']}G"
        if folder.name in cases:
            raise InputError(f"{folder}: case id {folder.name} appears twice under {root}")
        cases[folder.name] = BratsCase(folder.name, grade, paths, layout)
    if not cases:
        raise InputError(f"{root}: no BraTS case folders found (expected <ID>/<ID>_t2.nii.gz or <ID>-t2w.nii.gz)")
    out = [cases[k] for k in sorted(cases)]
    for case in out:
        for mod in require:
            case.path(mod)
    return out


def load_volume(path: Path) -> tuple[np.ndarray, Image]:
    """A NIfTI volume as float32 (voxel order i, j, k, scaling applied) and its Image (geometry)."""
    img = read_image(path)
    if img.array.ndim != 3:
        raise InputError(f"{path}: expected a 3D volume, got shape {img.array.shape}")
    arr = np.asarray(img.array, dtype=np.float32)
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{path}: contains NaN or Inf values")
    return arr, img


def brain_bbox(volumes: Iterable[np.ndarray], margin: int = 0) -> tuple[slice, ...]:
    """Bounding box of voxels that are non-zero in any of `volumes` (skull-stripped BraTS: the brain)."""
    vols = list(volumes)
    mask = np.zeros(vols[0].shape, dtype=bool)
    for v in vols:
        mask |= v != 0
    if not mask.any():
        raise InputError("all volumes are empty (no non-zero voxel)")
    box = []
    for ax in range(mask.ndim):
        other = tuple(i for i in range(mask.ndim) if i != ax)
        idx = np.flatnonzero(mask.any(axis=other))
        box.append(slice(max(int(idx[0]) - margin, 0), min(int(idx[-1]) + 1 + margin, mask.shape[ax])))
    return tuple(box)


def center_crop_pad(vol: np.ndarray, size: int) -> np.ndarray:
    """Crop or zero-pad every axis of `vol` symmetrically to `size` (the centre stays the centre)."""
    out = vol
    for ax, n in enumerate(vol.shape):
        if n > size:
            start = (n - size) // 2
            out = np.take(out, np.arange(start, start + size), axis=ax)
        elif n < size:
            before = (size - n) // 2
            pad = [(0, 0)] * vol.ndim
            pad[ax] = (before, size - n - before)
            out = np.pad(out, pad)
    return out


def resample_to_fit(vol: np.ndarray, size: int, order: int = 1) -> np.ndarray:
    """Scale `vol` by one factor so its longest axis is `size`, then zero-pad to `size`^ndim."""
    factor = size / max(vol.shape)
    target = [max(1, min(size, round(n * factor))) for n in vol.shape]
    zoomed = ndimage.zoom(vol, [t / n for t, n in zip(target, vol.shape, strict=True)], order=order,
                          mode="nearest", grid_mode=True)
    return center_crop_pad(zoomed, size)


def normalize_volume(vol: np.ndarray, clip_percentiles: tuple[float, float] | None = None,
                     name: str | Path | None = None) -> np.ndarray:
    """Map the brain (non-zero voxels) of `vol` to [0, 1] with `io.normalize01`; background stays 0.

    With `clip_percentiles=(lo, hi)` the brain's lo/hi percentiles become 0 and 1 (robust to hot voxels);
    without, its min and max do. A volume without brain, or with a constant one, is an InputError naming
    `name`, as every min-max in neurofuse treats a constant image.
    """
    mask = vol != 0
    if not mask.any():
        raise InputError(f"{name or 'volume'}: no non-zero voxel (empty brain): cannot normalise")
    out = np.zeros(vol.shape, dtype=np.float32)
    out[mask] = normalize01(vol[mask], clip_percentiles, name=name)
    return out


@dataclass(frozen=True)
class PreprocessConfig:
    """How a case is put on the classifier's grid.

    Args:
        size: edge of the cubic output grid (voxels).
        mode: "resample" (scale the brain box to fit, keeps the whole brain) or "crop" (crop/pad at
            native resolution around the brain box centre).
        clip_percentiles: brain percentiles mapped to 0 and 1, or None for min/max.
        modalities: image modalities to load (the seg is added when the case has one).
        margin: voxels kept around the brain box.
    """

    size: int = 128
    mode: str = "resample"
    clip_percentiles: tuple[float, float] | None = (0.5, 99.5)
    modalities: tuple[str, ...] = ("t2", "flair")
    margin: int = 2

    def __post_init__(self) -> None:
        if self.mode not in ("resample", "crop"):
            raise InputError(f"preprocessing mode must be 'resample' or 'crop', got {self.mode!r}")
        if self.size < 8:
            raise InputError(f"grid size must be at least 8, got {self.size}")


def preprocess_case(case: BratsCase, cfg: PreprocessConfig) -> dict[str, np.ndarray]:
    """`cfg.modalities` (and "seg" when present) of `case` on a `cfg.size`^3 grid, images in [0, 1]."""
    vols = {m: load_volume(case.path(m))[0] for m in cfg.modalities}
    shapes = {v.shape for v in vols.values()}
    if len(shapes) != 1:
        raise InputError(f"{case.path(cfg.modalities[0]).parent}: modalities differ in shape {sorted(shapes)}")
    seg = load_volume(case.paths["seg"])[0] if "seg" in case.paths else None
    if seg is not None and seg.shape not in shapes:
        raise InputError(f"{case.paths['seg']}: seg shape {seg.shape} differs from the images {shapes.pop()}")
    box = brain_bbox(vols.values(), cfg.margin)
    out: dict[str, np.ndarray] = {}
    for name, vol in {**vols, **({"seg": seg} if seg is not None else {})}.items():
        cropped = vol[box]
        if cfg.mode == "crop":
            grid = center_crop_pad(cropped, cfg.size)
        else:
            grid = resample_to_fit(cropped, cfg.size, order=0 if name == "seg" else 1)
        out[name] = (grid.astype(np.uint8) if name == "seg"
                     else normalize_volume(grid, cfg.clip_percentiles, name=case.path(name)))
    return out


def select_slices(seg: np.ndarray | None, n: int, depth: int | None = None, min_voxels: int = 1) -> np.ndarray:
    """Axial slice indices (along the third axis) for 2D use: the `n` slices with most tumour when a
    segmentation exists (ascending order), else the `n` central slices of a volume `depth` deep."""
    if seg is not None:
        area = (seg > 0).reshape(-1, seg.shape[2]).sum(axis=0)
        tumour = np.flatnonzero(area >= min_voxels)
        if tumour.size:
            best = tumour[np.argsort(-area[tumour], kind="stable")[:n]]
            return np.sort(best)
        depth = seg.shape[2]
    if depth is None:
        raise ValueError("select_slices needs a seg or the volume depth")
    start = max((depth - n) // 2, 0)
    return np.arange(start, min(start + n, depth))


def _case_fingerprint(case: BratsCase, modalities: Iterable[str]) -> dict:
    files = {}
    for m in sorted(set(modalities) | ({"seg"} & set(case.paths))):
        st = case.path(m).stat()
        files[m] = [str(case.path(m)), st.st_size, st.st_mtime_ns]
    return {"id": case.id, "files": files}


def cache_key(case: BratsCase, settings: dict) -> str:
    """Hex key of a case's files (path, size, mtime) plus the settings that produced an array."""
    blob = json.dumps({"case": _case_fingerprint(case, settings.get("modalities", ())), "settings": settings},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _save_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)


def load_preprocessed(case: BratsCase, cfg: PreprocessConfig, cache_dir: str | Path | None = None
                      ) -> dict[str, np.ndarray]:
    """`preprocess_case`, read from / written to `cache_dir/<id>-<key>.npz` when a cache folder is given."""
    if cache_dir is None:
        return preprocess_case(case, cfg)
    settings = {"kind": "preprocess", **asdict(cfg)}
    path = Path(cache_dir) / f"{case.id}-{cache_key(case, settings)}.npz"
    if path.is_file():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    arrays = preprocess_case(case, cfg)
    _save_npz_atomic(path, arrays)
    return arrays


def cached_array(case: BratsCase, settings: dict, cache_dir: str | Path | None,
                 make: Callable[[], np.ndarray]) -> np.ndarray:
    """A derived array of `case` (e.g. a fused volume) from the cache, or `make()` stored there."""
    if cache_dir is None:
        return make()
    path = Path(cache_dir) / f"{case.id}-{cache_key(case, settings)}.npz"
    if path.is_file():
        with np.load(path) as z:
            return z["array"]
    arr = make()
    _save_npz_atomic(path, {"array": arr})
    return arr

