"""Pairs of source images in the folder layouts fusion test sets are published in, and split files.

`find_pairs` accepts
- two folders (`a=`, `b=`): files paired by name (stem, so `x.png` pairs with `x.tif`), or by two
  patterns such as `{id}_1.tif` / `{id}_2.tif`;
- one root (`data=`) holding modality folders, found case-insensitively: the Harvard layout
  (`MRI/`, `CT/` | `SPECT/` | `PET/`), CDDFuse's `test_img/MRI_SPECT/{MRI,SPECT}` (also given as
  `test_img` when it holds one pair set), EMFusion's lowercase `mri/`, `ct/`; A is the MRI folder
  (or T2 for T2/FLAIR), B the other one;
- one flat folder of `{id}_1.EXT` / `{id}_2.EXT` files (IFCNN's `c01_1.tif`, `c01_2.tif`): A is `_1`.
Files present on one side only are listed in `PairSet.only_a` / `only_b` (`unpaired_message`).

`split.csv` (`id,case,split`): one row per pair id, `case` the patient the slice comes from, `split`
one of train, val, test. `select_split` reads it (`all` needs none); `make_split` writes one with
whole patients in each split (`neurofuse split`).
"""

from __future__ import annotations

import csv
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from neurofuse.errors import InputError, UsageError
from neurofuse.io import list_images, natural_key, suffix_of

SPLITS = ("train", "val", "test", "all")
SPLIT_FILE = "split.csv"
# Folder names of the anatomical reference (A), first match wins; every other known modality is B.
A_NAMES = ("mri", "mr", "t1", "t1w", "t2", "t2w")
B_NAMES = ("ct", "spect", "pet", "flair", "t2f", "fdg", "pd")
DEFAULT_PATTERN = ("{id}_1.*", "{id}_2.*")


@dataclass
class PairSet:
    """Pairs `(id, A path, B path)` in natural id order, the modality names, and what stayed unpaired."""

    pairs: list[tuple[str, Path, Path]]
    name_a: str
    name_b: str
    root: Path | None = None  # where split.csv belongs (the pair folder; None for two loose folders)
    only_a: list[Path] = field(default_factory=list)
    only_b: list[Path] = field(default_factory=list)
    where: str = ""  # how the pairs were found, for messages
    pattern: tuple[str, str] | None = None  # the file-name patterns that paired them (None: by name)

    def unpaired_message(self, limit: int = 5) -> str | None:
        """One line naming the files without a partner (the first `limit` of each side), or None."""
        parts = []
        for side, files in ((self.name_a, self.only_a), (self.name_b, self.only_b)):
            if files:
                shown = ", ".join(p.name for p in files[:limit]) + (", ..." if len(files) > limit else "")
                parts.append(f"{len(files)} {side} file(s) without a partner ({shown})")
        return f"{self.where}: " + "; ".join(parts) + " -- left out" if parts else None


def unpaired_by_name(dir_a: str | Path, dir_b: str | Path, pairs: Sequence[tuple[str, Path, Path]],
                     limit: int = 5) -> str | None:
    """One line naming the files of `dir_a`/`dir_b` that are in none of `pairs` (paired by file name)."""
    used = {p for _, pa, pb in pairs for p in (pa.name, pb.name)}
    ps = PairSet(list(pairs), Path(dir_a).name, Path(dir_b).name, None,
                 [p for p in list_images(dir_a) if p.name not in used],
                 [p for p in list_images(dir_b) if p.name not in used], f"{dir_a} and {dir_b}")
    return ps.unpaired_message(limit)


def _pattern_regex(pattern: str) -> re.Pattern:
    if "{id}" not in pattern:
        raise UsageError(f"pattern {pattern!r} must contain {{id}} (e.g. '{{id}}_1.tif')")
    parts = [re.escape(p).replace(r"\*", ".*").replace(r"\?", ".") for p in pattern.split("{id}")]
    return re.compile("(?P<id>.+?)".join(parts), re.IGNORECASE)


def _by_key(files: Sequence[Path], key) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in files:
        k = key(p)
        if k is None:
            continue
        if k in out:
            raise InputError(f"{p.parent}: {out[k].name} and {p.name} both give pair id {k!r}; keep one")
        out[k] = p
    return out


def _stem(p: Path) -> str:
    return p.name[: len(p.name) - len(suffix_of(p))]


def _match(files_a, files_b, pattern: tuple[str, str] | None, name_a, name_b, root, where) -> PairSet:
    if pattern is None:
        ka, kb = _by_key(files_a, _stem), _by_key(files_b, _stem)
    else:
        ra, rb = _pattern_regex(pattern[0]), _pattern_regex(pattern[1])

        def key(rx):
            return lambda p: m.group("id") if (m := rx.fullmatch(p.name)) else None

        ka, kb = _by_key(files_a, key(ra)), _by_key(files_b, key(rb))
        files_a, files_b = list(ka.values()), list(kb.values())  # only files of their side's pattern count
    ids = sorted(set(ka) & set(kb), key=natural_key)
    return PairSet(
        [(i, ka[i], kb[i]) for i in ids], name_a, name_b, root,
        [p for p in files_a if p not in {ka[i] for i in ids}],
        [p for p in files_b if p not in {kb[i] for i in ids}],
        where,
        pattern,
    )


def _image_dirs(root: Path) -> list[Path]:
    return sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and list_images(p)),
                  key=lambda p: natural_key(p.name))


def _words(name: str) -> set[str]:
    return {w for w in re.split(r"[^a-z0-9]+", name.lower()) if w}


def _modality_pair(root: Path, dirs: list[Path]) -> tuple[Path, Path] | None:
    """(A folder, B folder) among `dirs` by their names (case-insensitive), or None."""
    a = next((d for n in A_NAMES for d in dirs if d.name.lower() == n), None)
    if a is None:
        return None
    rest = [d for d in dirs if d != a]
    if len(rest) > 1:
        rest = [d for d in rest if d.name.lower() in B_NAMES or d.name.lower() in A_NAMES]
    if len(rest) != 1:
        names = ", ".join(d.name for d in dirs)
        raise InputError(f"{root}: found an {a.name}/ folder but not exactly one other modality folder among {names} "
                         "(names are matched case-insensitively); pass the two folders: `a=DIR, b=DIR`")
    return a, rest[0]


def find_pairs(data: str | Path | None = None, a: str | Path | None = None, b: str | Path | None = None,
               pattern: tuple[str, str] | None = None) -> PairSet:
    """The source pairs of a data root (`data`) or of two folders (`a`, `b`); see the module docstring."""
    if (data is None) == (a is None and b is None) or (a is None) != (b is None):
        raise UsageError("give either a data folder (--data ROOT) or two folders (--a DIR --b DIR)")
    if data is None:
        a, b = Path(a), Path(b)
        common = a.parent if a.parent == b.parent else None
        return _match(list_images(a), list_images(b), pattern, a.name, b.name, common, f"{a} and {b}")
    root = Path(data)
    if not root.is_dir():
        raise InputError(f"{root}: not a folder")
    dirs = _image_dirs(root)
    found = _modality_pair(root, dirs)
    if found is None and not dirs and not list_images(root):  # e.g. CDDFuse test_img/ with one MRI_X/ inside
        sets = [d for d in sorted(root.iterdir()) if d.is_dir() and _modality_pair(d, _image_dirs(d))]
        if len(sets) == 1:
            return find_pairs(data=sets[0], pattern=pattern)
        if sets:
            raise InputError(f"{root}: holds several pair sets ({', '.join(d.name for d in sets)}); pass one, "
                             f"e.g. --data {sets[0]}")
    if found is not None:
        da, db = found
        return _match(list_images(da), list_images(db), pattern, da.name, db.name, root, str(root))
    flat = list_images(root)
    if flat:
        pat = pattern or DEFAULT_PATTERN
        ps = _match(flat, flat, pat, "_1" if pattern is None else pattern[0], "_2" if pattern is None else pattern[1],
                    root, str(root))
        if ps.pairs:
            return ps
    names = ", ".join(d.name for d in dirs) or "none"
    raise InputError(
        f"{root}: no pairs found: expected an MRI/ (or T2/) folder beside one other modality folder (CT, SPECT, "
        f"PET, FLAIR; any case), or files named {{id}}_1.EXT / {{id}}_2.EXT; image folders here: {names}. "
        "Other layouts: `a=DIR, b=DIR` (paired by name or `pattern=(A, B)`)"
    )


def read_split(path: str | Path) -> dict[str, tuple[str, str]]:
    """`id -> (case, split)` from a split file (columns id,split and optionally case)."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"id", "split"} <= set(rows[0]):
        raise InputError(f"{path}: expected a header with columns id,case,split")
    bad = sorted({r["split"] for r in rows} - set(SPLITS[:-1]))
    if bad:
        raise InputError(f"{path}: unknown split name(s) {', '.join(bad)}; use train, val, test")
    return {r["id"]: (r.get("case") or r["id"], r["split"]) for r in rows}


def select_split(ps: PairSet, split: str, split_file: str | Path | None = None) -> list[tuple[str, Path, Path]]:
    """The pairs of `split` (train | val | test | all): `all` needs no split file, the others read
    `split_file` or `split.csv` in the pair folder; ids listed there without files are an error."""
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    path = Path(split_file) if split_file is not None else (ps.root / SPLIT_FILE if ps.root is not None else None)
    if split == "all" and split_file is None:
        return list(ps.pairs)
    if path is None or not path.is_file():
        where = path if path is not None else f"{ps.where} (no common parent)"
        raise InputError(f"{where}: no split file for split {split!r}: use `split=\"all\"`, or write one with "
                         f"`neurofuse split` (columns id,case,split)")
    table = read_split(path)
    by_id = {i: (i, pa, pb) for i, pa, pb in ps.pairs}
    missing = [i for i, (_, s) in table.items() if (split == "all" or s == split) and i not in by_id]
    if missing:
        raise InputError(f"{path}: {len(missing)} id(s) of split {split!r} have no pair of files, e.g. {missing[0]!r}")
    keep = [p for p in ps.pairs if p[0] in table and (split == "all" or table[p[0]][1] == split)]
    if not keep:
        raise InputError(f"{path}: no rows for split {split!r}")
    return keep


def harvard_case(id_: str) -> str | None:
    """The patient of a Harvard atlas slice name `<patient><3-digit slice>` (`16003` -> `16`), else None."""
    return id_[:-3] if id_.isdigit() and len(id_) > 3 else None


def case_of(id_: str, case_regex: str | None = None) -> str:
    """The patient id of a pair id: group 1 (or the whole match) of `case_regex`, else the Harvard rule,
    else the id itself (each pair its own patient)."""
    if case_regex is not None:
        m = re.search(case_regex, id_)
        if m is None:
            raise InputError(f"pair id {id_!r} does not match the case regex {case_regex!r}")
        return m.group(1) if m.groups() else m.group(0)
    return harvard_case(id_) or id_


def make_split(ids: Sequence[str], val: float = 0.2, test: float = 0.0, seed: int = 0,
               case_regex: str | None = None) -> list[dict[str, str]]:
    """Rows `{id, case, split}` with whole patients in each split: the patients are shuffled with `seed`,
    then `round(test * n)` go to test and `round(val * n)` to val (at least one each when the fraction is
    positive), the rest to train."""
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise UsageError(f"--val {val} --test {test}: fractions in [0, 1) that sum below 1")
    cases = {i: case_of(i, case_regex) for i in ids}
    patients = sorted(set(cases.values()), key=natural_key)
    n = len(patients)
    n_test = max(1, round(test * n)) if test > 0 else 0
    n_val = max(1, round(val * n)) if val > 0 else 0
    if n_test + n_val >= n:
        raise InputError(f"{n} patient(s) found: too few for --val {val} --test {test} with a train split left "
                         "(patients come from --case-regex, the Harvard <patient><slice> names, or one per pair)")
    order = list(patients)
    random.Random(seed).shuffle(order)
    which = {p: "test" for p in order[:n_test]} | {p: "val" for p in order[n_test:n_test + n_val]}
    return [{"id": i, "case": cases[i], "split": which.get(cases[i], "train")}
            for i in sorted(ids, key=natural_key)]


def split_summary(rows: Sequence[dict[str, str]]) -> str:
    """`train: 120 pairs (6 patients), val: ...` for a split table."""
    parts = []
    for s in SPLITS[:-1]:
        sel = [r for r in rows if r["split"] == s]
        if sel:
            parts.append(f"{s}: {len(sel)} pairs ({len({r['case'] for r in sel})} patients)")
    return ", ".join(parts)
