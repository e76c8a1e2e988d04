"""Compare neurofuse's metrics with the values the reference toolboxes computed (the fixture JSON).

python tools/toolbox_reference/compare.py [--markdown] [tests/metrics/fixtures/toolbox_values.json]
(--markdown: the metric x toolbox agreement table of docs/metrics.md)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from neurofuse.metrics import compute_metrics_image

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "metrics" / "fixtures"


def load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.float64) / 255.0


def ours(entry: dict, cache: dict) -> float:
    t = entry["triplet"]
    pair, method = t.split("_F_")
    a, b, f = (load(FIX / "toolbox" / n) for n in (f"{pair}_A.png", f"{pair}_B.png", f"{t}.png"))
    crop = entry.get("crop")
    if crop:
        r = slice(crop[0], crop[1])
        a, b, f = a[r, r], b[r, r], f[r, r]
    key = (t, entry["preset"], entry["metric"], tuple(crop or ()))
    if key not in cache:
        cache[key] = compute_metrics_image(a, b, f, [entry["metric"]], entry["preset"])[entry["metric"]]
    return cache[key]


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--markdown"]
    data = json.loads(Path(args[0] if args else FIX / "toolbox_values.json").read_text())
    cache: dict = {}
    worst: dict = {}
    for e in data["values"]:
        v = ours(e, cache)
        rel = abs(v - e["value"]) / max(abs(e["value"]), 1e-12)
        k = (e["toolbox"], e["function"], e["metric"])
        worst[k] = max(worst.get(k, 0.0), rel)
        if rel > 1e-3:
            print(f"MISMATCH {e['toolbox']:8s} {e['triplet']:28s} {e['function']:28s}", e["value"], v)
    for k, w in sorted(worst.items()):
        print(f"{k[0]:8s} {k[1]:30s} {k[2]:16s} max rel diff {w:.2e}")
    if "--markdown" in sys.argv:
        tbs = ("vifb", "tang", "cddfuse")
        n = {tb: len({e["triplet"] for e in data["values"] if e["toolbox"] == tb}) for tb in tbs}
        print("\n| metric | " + " | ".join(f"{tb} ({n[tb]} triplets)" for tb in tbs) + " |")
        print("|---|" + "---|" * len(tbs))
        for m in sorted({k[2] for k in worst}):
            cells = []
            for tb in tbs:
                hits = [(k[1], w) for k, w in worst.items() if k[0] == tb and k[2] == m]
                cells.append("; ".join(f"`{fn}` {w:.0e}" for fn, w in hits) if hits else "—")
            print(f"| {m} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
