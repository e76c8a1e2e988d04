"""The package's layers (docs/architecture.md): imports flow one way, and the fast paths stay torch-free.

Every `import` in `src/neurofuse` counts, also those inside functions (a lazy upward import is still a
cycle waiting to happen): a module may import its own layer or one below, never one above. Within
the models/metrics/data layer the three groups do not import each other, and no network imports
another network (the peers share `models.blocks`, `models.swin`, ... and `losses`).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "neurofuse"

# Lowest first. A module belongs to the first entry that is it or a package above it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("errors", ("neurofuse.errors",)),
    ("io", ("neurofuse.io", "neurofuse.precision", "neurofuse.layouts", "neurofuse.shards")),
    ("nn blocks + ssm", ("neurofuse.ssm", "neurofuse.losses", "neurofuse.models.blocks", "neurofuse.models.mamba",
                         "neurofuse.models.swin", "neurofuse.models.diffusion")),
    ("models / metrics / data", ("neurofuse.models", "neurofuse.metrics", "neurofuse.data", "neurofuse.brats",
                                 "neurofuse.synthetic")),
    ("fusion", ("neurofuse.fusion", "neurofuse.baselines", "neurofuse.learned", "neurofuse.inference",
                "neurofuse.pipeline", "neurofuse.registration", "neurofuse")),
    ("apps", ("neurofuse.train", "neurofuse.evaluate", "neurofuse.benchmark", "neurofuse.classify",
              "neurofuse.curves", "neurofuse.report")),
    ("cli", ("neurofuse.cli", "neurofuse.__main__", "neurofuse.demo")),
]
# groups of one layer that must not import each other
GROUPS = {"neurofuse.models": "models", "neurofuse.metrics": "metrics", "neurofuse.data": "data",
          "neurofuse.brats": "data", "neurofuse.synthetic": "data"}
NETWORK_SUPPORT = {"registry", "pretrained", "optim", "blocks", "mamba", "swin", "diffusion"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _owner(name: str, table: list[tuple[str, tuple[str, ...]]] | dict) -> str | None:
    """The longest prefix of `name` listed in `table` (module or package above it)."""
    keys = [k for _, ks in table for k in ks] if isinstance(table, list) else list(table)
    best = max((k for k in keys if name == k or name.startswith(k + ".")), key=len, default=None)
    return best


def layer_of(name: str) -> int:
    key = _owner(name, LAYERS)
    assert key is not None, f"{name}: not in any layer of tests/test_layering.py (add it, and to docs/architecture.md)"
    return next(i for i, (_, ks) in enumerate(LAYERS) if key in ks)


def imports_of(module: str) -> set[str]:
    """Every neurofuse module `module` imports (top level, inside functions, under TYPE_CHECKING)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, `level - 1` packages up
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES}
    return {n for n in found if n == "neurofuse" or n.startswith("neurofuse.")}


def edges() -> list[tuple[str, str]]:
    return sorted((m, t) for m in MODULES for t in imports_of(m) if t != m)


def test_every_module_has_a_layer():
    for m in MODULES:
        layer_of(m)


def upward_edges() -> list[str]:
    return [f"{m} ({LAYERS[layer_of(m)][0]}) -> {t} ({LAYERS[layer_of(t)][0]})"
            for m, t in edges() if layer_of(t) > layer_of(m)]


def test_no_module_imports_a_layer_above_it():
    upward = upward_edges()
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_models_metrics_and_data_do_not_import_each_other():
    sideways = []
    for m, t in edges():
        gm, gt = _owner(m, GROUPS), _owner(t, GROUPS)
        if gm and gt and GROUPS[gm] != GROUPS[gt] and layer_of(m) == layer_of(t):
            sideways.append(f"{m} -> {t}")
    assert not sideways, "sideways imports:\n" + "\n".join(sideways)


def test_no_network_imports_another_network():
    networks = {m for m in MODULES if m.startswith("neurofuse.models.") and m.rsplit(".", 1)[1] not in NETWORK_SUPPORT}
    bad = [f"{m} -> {t}" for m, t in edges() if m in networks and t in networks]
    assert not bad, "a network imports another (move the shared part to models.blocks or losses):\n" + "\n".join(bad)


def test_the_layering_check_sees_an_upward_edge(tmp_path, monkeypatch):
    """The walker itself: a function-level import of an app from the io layer is reported."""
    fake = tmp_path / "io.py"
    fake.write_text("def f():\n    from neurofuse.train import train\n    return train\n", encoding="utf-8")
    monkeypatch.setitem(MODULES, "neurofuse.io", fake)
    assert "neurofuse.train" in imports_of("neurofuse.io")
    assert "neurofuse.io (io) -> neurofuse.train (apps)" in upward_edges()


def _run(code: str) -> dict:
    """Run `code` in a fresh interpreter (nothing imported yet) and return the JSON it prints last."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


HEAVY = ("torch", "neurofuse.models.registry", "neurofuse.metrics", "neurofuse.data", "neurofuse.train")


@pytest.mark.parametrize("method", ["average", "maximum", "pca", "dwt", "laplacian"])
def test_classical_fusion_imports_no_torch(method):
    got = _run(f"""
import json, sys
import numpy as np
import neurofuse
a, b = np.random.default_rng(0).random((2, 16, 16))
neurofuse.fuse(a, b, {method!r})
names = [m.name for m in neurofuse.list_methods()]
print(json.dumps({{"loaded": [m for m in {HEAVY!r} if m in sys.modules], "n": len(names)}}))
""")
    assert got["loaded"] == [] and got["n"] >= 12  # learned methods are listed without loading them


@pytest.mark.parametrize("args", [["--help"], ["methods"], ["evaluate", "--help"], ["train", "--help"],
                                  ["classify", "--help"], ["benchmark", "--help"], ["fuse-brats", "--help"]])
def test_cli_help_and_methods_import_no_torch(args):
    got = _run(f"""
import json, sys
from neurofuse.cli import main
try:
    main({args!r}, standalone_mode=False)
except SystemExit:
    pass
print(json.dumps({{"loaded": [m for m in ("torch", "neurofuse.models.registry") if m in sys.modules]}}))
""")
    assert got["loaded"] == []


def test_cli_fuse_of_a_classical_method_imports_no_torch(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for n in "ab":
        Image.fromarray((rng.random((32, 32)) * 255).astype("uint8")).save(tmp_path / f"{n}.png")
    got = _run(f"""
import json, sys
from neurofuse.cli import main
main(["fuse", {str(tmp_path / "a.png")!r}, {str(tmp_path / "b.png")!r}, "-o", {str(tmp_path / "f.png")!r},
      "-m", "laplacian"], standalone_mode=False)
print(json.dumps({{"loaded": [m for m in ("torch", "neurofuse.models.registry") if m in sys.modules]}}))
""")
    assert got["loaded"] == [] and (tmp_path / "f.png").is_file()


def test_cli_constants_match_the_modules_they_stand_in_for():
    from neurofuse import benchmark
    from neurofuse.cli import benchmark as cli_benchmark

    assert cli_benchmark.PRESETS == benchmark.PRESETS
