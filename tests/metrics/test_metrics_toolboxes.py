"""Every metric against the values the reference toolboxes computed themselves (fixtures, no toolbox code).

`fixtures/toolbox_values.json` holds what VIFB's MATLAB metrics and Tang's Evaluation-for-Image-Fusion
(both run under GNU Octave) and CDDFuse's utils/Evaluator.py (Python, its pinned requirements)
returned on the triplets in `fixtures/toolbox/`, with provenance; tools/toolbox_reference/ says how.
Each value is reproduced by the named metric under the toolbox's preset, colour handling included.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from neurofuse.cli import main
from neurofuse.errors import UsageError
from neurofuse.metrics import compute_metrics_image, get_preset, metric_conventions
from neurofuse.metrics.inputs import channel_triplets, to_gray

FIX = Path(__file__).parent / "fixtures"
DATA = json.loads((FIX / "toolbox_values.json").read_text(encoding="utf-8"))
REL = 1e-3


@cache
def _load(name: str) -> np.ndarray:
    return np.asarray(Image.open(FIX / "toolbox" / name), dtype=np.float64) / 255.0


def _triplet(entry: dict):
    pair = entry["triplet"].split("_F_")[0]
    arrs = [_load(n) for n in (f"{pair}_A.png", f"{pair}_B.png", f"{entry['triplet']}.png")]
    if "crop" in entry:
        r = slice(*entry["crop"])
        arrs = [x[r, r] for x in arrs]
    return arrs


def _groups():
    """(toolbox, metric, preset) -> entries, one test per toolbox metric over all its triplets."""
    out: dict[tuple[str, str, str], list[dict]] = {}
    for e in DATA["values"]:
        out.setdefault((e["toolbox"], e["metric"], e["preset"]), []).append(e)
    return out


GROUPS = _groups()


def test_fixtures_cover_every_toolbox_on_six_triplets():
    for tb in ("vifb", "tang", "cddfuse"):
        triplets = {e["triplet"] for e in DATA["values"] if e["toolbox"] == tb}
        assert len(triplets) >= 6, tb
        assert {t.split("-")[0] for t in triplets} == {"ct", "spect", "pet"}
        assert DATA["provenance"][tb]["commit"]


@pytest.mark.parametrize("key", sorted(GROUPS), ids=lambda k: f"{k[0]}-{k[1]}")
def test_metric_equals_toolbox(key):
    toolbox, metric, preset = key
    for e in GROUPS[key]:
        ours = compute_metrics_image(*_triplet(e), [metric], preset)[metric]
        assert ours == pytest.approx(e["value"], rel=REL), (toolbox, e["function"], e["triplet"])


def test_qcb_reproduces_the_toolbox_round_off():
    """Qcb on black backgrounds is a ratio of FFT round-off values (metrics/perceptual.py): with the CSF in
    the toolbox's operation order and FFTW laid out as Octave calls it, Octave's value comes back to ~1e-13
    (numpy's FFT: up to 3.8e-4 off on the PET triplets, and other FFTs or flipped inputs up to 2e-3)."""
    from neurofuse.metrics import perceptual

    assert perceptual._pyfftw() is not None, "pyFFTW (a dependency) is needed to reproduce VIFB's Qcb"
    for e in GROUPS[("vifb", "Qcb", "vifb")]:
        ours = compute_metrics_image(*_triplet(e), ["Qcb"], "vifb")["Qcb"]
        assert ours == pytest.approx(e["value"], rel=1e-9), e["triplet"]


def test_qcb_numpy_fallback_away_from_black_backgrounds(monkeypatch):
    """Without pyFFTW numpy's FFT is used: the same values wherever the filtered images stay above round-off
    (the CT-MRI triplets: 1.1e-7 measured)."""
    from neurofuse.metrics import perceptual

    monkeypatch.setattr(perceptual, "_pyfftw", lambda: None)
    for e in GROUPS[("vifb", "Qcb", "vifb")]:
        if e["triplet"].startswith("ct-mri"):
            ours = compute_metrics_image(*_triplet(e), ["Qcb"], "vifb")["Qcb"]
            assert ours == pytest.approx(e["value"], rel=1e-6), e["triplet"]


@pytest.mark.parametrize("preset", ["vifb", "tang", "cddfuse"])
def test_every_preset_metric_has_a_toolbox_value(preset):
    """Each 2D default of a toolbox preset is checked against that toolbox (except those it cannot run)."""
    covered = {m for (tb, m, p) in GROUPS if p == preset}
    not_run = {"tang": {"FMI_edge"}}.get(preset, set())  # MATLAB's edge(); Octave's is FMI_edge_octave
    assert set(get_preset(preset).default_2d) - not_run <= covered


@pytest.mark.parametrize("preset", ["vifb", "tang", "cddfuse", "clinicalfmamba", "standard"])
def test_cli_json_prints_values_and_conventions(preset):
    """`evaluate --json` on a colour triplet: the toolbox's own values come back with their conventions."""
    pair, t = "spect-mri_4011", "spect-mri_4011_F_dwt"
    paths = [str(FIX / "toolbox" / n) for n in (f"{pair}_A.png", f"{pair}_B.png", f"{t}.png")]
    names = "PSNR,SSIM" if preset != "clinicalfmamba" else "PSNR,SSIM,EN_unique"
    res = CliRunner().invoke(main, ["evaluate", *paths, "--preset", preset, "--json", "--metrics", names])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["preset"] == preset and set(out["values"]) == set(names.split(","))
    assert set(out["conventions"]) == set(out["values"])
    ref = {e["metric"]: e["value"] for e in DATA["values"] if e["triplet"] == t and e["preset"] == preset}
    for m, v in out["values"].items():
        if m in ref:
            assert v == pytest.approx(ref[m], rel=REL)
    if preset == "clinicalfmamba":
        assert "FLAG" in out["conventions"]["EN_unique"]


def test_conventions_name_sum_mean_units_and_range():
    std = metric_conventions(["SSIM", "MI", "PSNR"], "standard")
    cf = metric_conventions(["SSIM", "PSNR", "EN_unique"], "clinicalfmamba")
    vifb = metric_conventions(["MI", "PSNR", "SF"], "vifb")
    assert "sum over sources" in std["SSIM"] and "data range 255" in std["SSIM"] and "bits" in std["MI"]
    assert "mean over sources" in cf["SSIM"] and "data range 1" in cf["PSNR"] and "FLAG" in cf["EN_unique"]
    assert "nats" in vifb["MI"] and "per_channel" in vifb["SF"]
    assert "peak max(F)" in metric_conventions(["PSNR"], "cddfuse")["PSNR"]


@pytest.mark.parametrize("preset", ["vifb", "tang", "cddfuse"])
def test_toolbox_presets_on_volumes(preset):
    """3D: the preset's 3D list is computed; a 2D-only metric is a clear UsageError (or slicewise)."""
    rng = np.random.default_rng(0)
    a, b = rng.random((24, 24, 24)), rng.random((24, 24, 24))
    f = 0.5 * (a + b)
    vals = compute_metrics_image(a, b, f, preset=preset)
    assert list(vals) == list(get_preset(preset).default_3d) and all(np.isfinite(list(vals.values())))
    with pytest.raises(UsageError, match="2D input only"):
        compute_metrics_image(a, b, f, ["Qabf"], preset)
    assert np.isfinite(compute_metrics_image(a, b, f, ["Qabf"], preset, slicewise="axial")["Qabf"])


def test_colour_conversions():
    """rgb2gray (Octave/MATLAB weights, half away from zero), cv2 float32 weights, VIFB per channel."""
    rgb = np.zeros((1, 3, 3))
    rgb[0, 0] = (1.0, 0.0, 0.0)
    rgb[0, 1] = (0.0, 1.0, 0.0)
    rgb[0, 2] = (10 / 255, 20 / 255, 30 / 255)
    assert np.allclose(to_gray(rgb, "rgb2gray")[0] * 255, [76, 150, 18])  # 76.23, 149.70, 17.69 rounded
    assert np.allclose(to_gray(rgb, "cv2_gray")[0] * 255, [76, 150, 18])
    chans = channel_triplets(rgb[..., 0], rgb, rgb)
    assert len(chans) == 3 and all(t[0] is chans[0][0] for t in chans)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["vifb", "tang", "cddfuse", "clinicalfmamba", "standard"])
def test_cli_json_default_lists_on_gray_colour_and_volumes(preset, tmp_path):
    """`neurofuse evaluate A B F --preset P --json` with the preset's default metrics: a gray (CT-MRI) and a
    colour (PET-MRI) triplet give the 2D list, NIfTI volumes the 3D list; a 2D-only metric on volumes is a
    usage error (exit 2) that names --slicewise."""
    import nibabel as nib

    runner = CliRunner()
    p = get_preset(preset)
    for pair, t in (("ct-mri_16007", "ct-mri_16007_F_pca"), ("pet-mri_25040", "pet-mri_25040_F_dwt")):
        paths = [str(FIX / "toolbox" / n) for n in (f"{pair}_A.png", f"{pair}_B.png", f"{t}.png")]
        res = runner.invoke(main, ["evaluate", *paths, "--preset", preset, "--json"])
        assert res.exit_code == 0, res.output
        out = json.loads(res.output)
        assert set(out["values"]) == set(p.default_2d) == set(out["conventions"]), t
        assert all(np.isfinite(v) for v in out["values"].values()), t
    rng = np.random.default_rng(1)
    a, b = rng.random((32, 32, 32)).astype(np.float32), rng.random((32, 32, 32)).astype(np.float32)
    vols = []
    for name, x in (("a", a), ("b", b), ("f", 0.5 * (a + b))):
        vols.append(str(tmp_path / f"{name}.nii.gz"))
        nib.save(nib.Nifti1Image(x, np.eye(4)), vols[-1])
    res = runner.invoke(main, ["evaluate", *vols, "--preset", preset, "--json"])
    assert res.exit_code == 0, res.output
    assert list(json.loads(res.output)["values"]) == list(p.default_3d)
    res = runner.invoke(main, ["evaluate", *vols, "--preset", preset, "--json", "--metrics", "Qcb"])
    assert res.exit_code == 2 and "2D input only" in res.output and "slicewise" in res.output
