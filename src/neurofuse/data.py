"""Training and validation datasets for fusion models: Harvard 2D slice pairs and BraTS-layout volumes.

Both return `{"a": tensor (1, *spatial), "b": tensor (1, *spatial), "id": str}` in [0, 1], with
`a` the anatomical MRI (Harvard: MRI; BraTS: T2) and `b` the other modality (CT, the Y channel of
SPECT/PET; BraTS: FLAIR). Images are read once and cached in memory. Random crops, flips and
rotations (training only) are drawn from a generator seeded by `(seed, epoch, index)`, so an item is
the same whatever the DataLoader worker count, and a resumed run sees exactly the data the
uninterrupted run would have seen (call `set_epoch` at the start of every epoch).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from neurofuse.brats import PreprocessConfig, discover, preprocess_case
from neurofuse.errors import InputError
from neurofuse.io import normalize01, read_luma
from neurofuse.layouts import find_pairs, select_split

SPLITS = ("train", "val", "test", "all")


def _read_luma(path: Path) -> np.ndarray:
    """Gray value of a 2D image in native units; the Y channel (full-range BT.601, as PIL) of colour."""
    return np.asarray(read_luma(path), dtype=np.float32)


def _rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])


def _check_split(split: str, where: Path) -> None:
    if split not in SPLITS:
        raise InputError(f"{where}: unknown split {split!r}; use one of {', '.join(SPLITS)}")


def _augment(arrays: list[np.ndarray], crop: int | None, flips: bool,
             rng: np.random.Generator) -> list[np.ndarray]:
    """Same random crop (cube/square of side `crop`), axis flips and (2D) rot90 for every array."""
    shape = arrays[0].shape
    if crop is not None:
        if any(s < crop for s in shape):
            raise InputError(f"crop {crop} is larger than the image {shape}")
        starts = [int(rng.integers(0, s - crop + 1)) for s in shape]
        sl = tuple(slice(s, s + crop) for s in starts)
        arrays = [x[sl] for x in arrays]
    if flips:
        for axis in range(len(shape)):
            if rng.random() < 0.5:
                arrays = [np.flip(x, axis) for x in arrays]
        if len(shape) == 2 and arrays[0].shape[0] == arrays[0].shape[1]:
            k = int(rng.integers(0, 4))
            arrays = [np.rot90(x, k) for x in arrays]
    return [np.ascontiguousarray(x) for x in arrays]


class _PairDataset(Dataset):
    """Shared item logic: cached (a, b) arrays in [0,1], optional crop/flip augmentation."""

    def __init__(self, crop: int | None, augment: bool, seed: int) -> None:
        self.crop = crop
        self._clamp_crop = False
        self.augment = augment
        # Intensity augmentation (set by the trainer): robustness to the normalisation a user's inputs get
        # (whole-volume min-max puts the brain lower than brain percentiles do when there are hot voxels).
        self.gain_jitter = 0.0
        self.seed = seed
        self.epoch = 0
        self.ids: list[str] = []
        self._a: list[np.ndarray] = []
        self._b: list[np.ndarray] = []

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of `epoch` (deterministic per epoch and item)."""
        self.epoch = epoch

    def set_crop(self, side: int | None) -> None:
        """Train on crops of `side` from now on (growing-crop schedules); a side the image does not
        exceed on any axis means the whole image, a side larger than one axis is cut to that axis."""
        self.crop = side
        self._clamp_crop = True

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def item_shape(self) -> tuple[int, ...]:
        """Spatial shape of the first whole (uncropped) item."""
        return tuple(self._a[0].shape)

    def _arrays(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The cached pair of item `index` as float32 in [0, 1]."""
        return self._a[index], self._b[index]

    def __getitem__(self, index: int) -> dict:
        a, b = self._arrays(index)
        crop = self.crop
        if crop is not None and self._clamp_crop:
            crop = None if all(s <= crop for s in a.shape) else min(crop, *a.shape)
        if crop is not None or self.augment:
            rng = _rng(self.seed, self.epoch, index)
            a, b = _augment([a, b], crop, self.augment, rng)
            if self.augment and self.gain_jitter > 0:  # each input scaled by U(1 - jitter, 1), half the time
                gains = rng.uniform(1.0 - self.gain_jitter, 1.0, size=2) if rng.random() < 0.5 else (1.0, 1.0)
                a, b = a * np.float32(gains[0]), b * np.float32(gains[1])
        return {"a": torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None],
                "b": torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32))[None],
                "id": self.ids[index]}


def harvard_split(root: str | Path, split: str) -> tuple[str, list[tuple[str, Path, Path]]]:
    """(other modality, [(id, MRI path, other path)]) of one split of a pair folder, in natural id order.

    Any layout `neurofuse.layouts.find_pairs` knows (Harvard `MRI/` + one other modality folder, any
    case; CDDFuse; `{id}_1`/`{id}_2` files); `split.csv` (id,case,split) decides unless split is "all".
    """
    ps = find_pairs(data=root)
    return ps.name_b, select_split(ps, split)


class HarvardPairs(_PairDataset):
    """Harvard (AANLIB) 2D pairs in `<root>/MRI/*.png` and `<root>/<CT|SPECT|PET>/*.png` with `split.csv`.

    Args:
        root: a pair folder such as `$NEUROFUSE_DATA/harvard/SPECT-MRI` (any `neurofuse.layouts` layout).
        split: "train", "val" or "all" (rows of `split.csv`: id,case,split).
        crop: side of a random square crop (training); None keeps the full 256x256 image.
        augment: random flips and rot90 (training).
        ids: keep only these ids (after the split filter), e.g. for tests.
        seed: seed of the augmentation draws.
    """

    def __init__(self, root: str | Path, split: str = "train", crop: int | None = None, augment: bool = False,
                 ids: Sequence[str] | None = None, seed: int = 3407) -> None:
        super().__init__(crop, augment, seed)
        self.modality_b, pairs = harvard_split(root, split)
        self.root = Path(root)
        wanted = None if ids is None else {str(i) for i in ids}
        for id_, pa, pb in pairs:
            if wanted is not None and id_ not in wanted:
                continue
            a, b = _compact(_read_luma(pa)), _compact(_read_luma(pb))
            if a.shape != b.shape:
                raise InputError(f"{pb}: shape {b.shape} differs from the MRI's {a.shape}")
            self.ids.append(id_)
            self._a.append(a)
            self._b.append(b)

    def _arrays(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        where = f"{self.root} pair {self.ids[index]}"  # (read_image already refuses constant files)
        return normalize01(self._a[index], name=where), normalize01(self._b[index], name=where)


def _compact(x: np.ndarray) -> np.ndarray:
    """8-bit images as uint8 (4x less cache memory), anything else as float32; min-max happens per item."""
    if x.min() >= 0 and x.max() <= 255 and np.array_equal(x, np.round(x)):
        return x.astype(np.uint8)
    return x.astype(np.float32)


class VolumePairs(_PairDataset):
    """T2 / FLAIR volume pairs from BraTS-layout folders (2019 `_t2`/`_flair`, 2023 `-t2w`/`-t2f`).

    Cases are found and preprocessed by `neurofuse.brats` (`discover`, `preprocess_case`): cropped to
    the brain bounding box, brought to `prep.size`^3 (aspect-preserving resample or centre crop/pad)
    and normalised per volume to [0,1] (brain percentiles `prep.clip_percentiles`). Training draws
    random `crop`^3 patches with random flips on all three axes.

    Args:
        root: folder searched for cases at any level (e.g. `MICCAI_BraTS_2019_Data_Training/`).
        split: "train", "val" or "all". A `split.csv` (id,split or id,case,split) in `root` decides;
            without one, cases sorted by id go to val at every fifth position (index % 5 == 4); a
            cohort too small for that puts its last case in val, and a single case serves both.
            `val_ids` overrides both: exactly those cases are val, every other case is train.
        crop: side of the random training patch; None keeps the whole cube.
        augment: random flips along each axis.
        prep: grid size, fit mode and normalisation (`neurofuse.brats.PreprocessConfig`).
        ids: keep only these case ids.
        seed: seed of the patch and flip draws.
        val_ids: the held-out cases (see `split`).
    """

    def __init__(self, root: str | Path, split: str = "train", crop: int | None = None, augment: bool = False,
                 prep: PreprocessConfig = PreprocessConfig(), ids: Sequence[str] | None = None,
                 seed: int = 3407, val_ids: Sequence[str] | None = None) -> None:
        super().__init__(crop, augment, seed)
        root = Path(root)
        _check_split(split, root)
        cases = discover(root, require=("t2", "flair"))
        if ids is not None:
            wanted = {str(i) for i in ids}
            cases = [c for c in cases if c.id in wanted]
        all_ids = [c.id for c in cases]
        if val_ids is not None:
            unknown = sorted(set(val_ids) - set(all_ids))
            if unknown:
                raise InputError(f"{root}: val_ids not found among the cases: {', '.join(unknown)}")
            held = set(val_ids)
            chosen = [c for c in cases if split == "all" or (split == "val") == (c.id in held)]
        else:
            chosen = [c for c in cases if split == "all" or split in self._splits_of(root, all_ids, c.id)]
        if not chosen:
            raise InputError(f"{root}: no cases for split {split!r}")
        self.root, self.prep = root, replace(prep, modalities=("t2", "flair"))
        for case in chosen:
            vols = preprocess_case(case, self.prep)
            self.ids.append(case.id)
            self._a.append(vols["t2"])
            self._b.append(vols["flair"])

    @staticmethod
    def _splits_of(root: Path, all_ids: list[str], case: str) -> tuple[str, ...]:
        """The split(s) a case belongs to (a lone case without split.csv is in both)."""
        split_csv = root / "split.csv"
        if split_csv.is_file():
            with open(split_csv, newline="", encoding="utf-8") as fh:
                table = {r["id"]: r["split"] for r in csv.DictReader(fh)}
            if case not in table:
                raise InputError(f"{split_csv}: case {case!r} is not listed")
            return (table[case],)
        n, i = len(all_ids), all_ids.index(case)
        if n == 1:
            return ("train", "val")
        if n < 5:
            return ("val",) if i == n - 1 else ("train",)
        return ("val",) if i % 5 == 4 else ("train",)
