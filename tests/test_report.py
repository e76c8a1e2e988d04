"""`neurofuse report`: a self-contained HTML page of a benchmark run, checked end to end in headless
Chromium (Debian's `chromium` package; `make browser` installs it, the browser tests skip without it)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import neurofuse
from neurofuse.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_layouts import make_folders  # noqa: E402

VOLS = Path(neurofuse.__file__).parent / "examples/brats3d"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("report")
    root = make_folders(d / "SPECT-MRI", ("MRI", "SPECT"), ["1", "2", "3"], colour_b=True)
    res = CliRunner().invoke(main, ["benchmark", "--data", str(root), "--methods", "average,pca", "-o", str(d / "res"),
                                    "--no-progress", "--preset", "standard"])
    assert res.exit_code == 0, res.output
    out = d / "report.html"
    res = CliRunner().invoke(main, ["report", str(d / "res"), "-o", str(out), "--volume", f"t2={VOLS / 't2.nii.gz'}",
                                    "--volume", f"flair={VOLS / 'flair.nii.gz'}"])
    assert res.exit_code == 0, res.output
    return out


def test_report_is_self_contained(report):
    page = report.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", page)  # nothing fetched
    assert "<link" not in page and page.count("data:image/png;base64,") > 9
    assert "summary standard" in page and "per image" in page and 'option value="pca"' in page


def _chromium(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (Debian: `make browser` or apt-get install chromium)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    url = report.resolve().as_uri() + "#sort=PSNR"
    dom = _chromium("--virtual-time-budget=3000", "--dump-dom", url).stdout
    fused = re.findall(r'<img class="fused" data-id="(\w+)"[^>]*src="(data:image/png;base64,[^"]{100,})"', dom)
    assert [i for i, _ in fused] == ["1", "2", "3"]  # the method picker filled every fused image
    assert re.search(r'<th class="sorted-asc">PSNR</th>', dom)  # #sort=PSNR sorted the per-image table
    assert re.search(r"axial \d+/\d+", dom)  # the slice viewer ran
    shot = tmp_path / "shot.png"
    _chromium("--window-size=1000,1400", f"--screenshot={shot}", url)
    rgb = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    # The synthetic SPECT (and the fused images that carry its colour) are saturated blue, which no text,
    # table or chart of the page uses: rendered images cover tens of thousands of such pixels.
    blue = (rgb[..., 2] > 180) & (rgb[..., 0] < 80) & (rgb[..., 1] < 60)
    assert blue.sum() > 20000, blue.sum()
    # the volumes: gray brain slices beside each other (mid-gray pixels, not the white page)
    gray = (np.ptp(rgb, axis=-1) < 8) & (rgb[..., 0] > 60) & (rgb[..., 0] < 200)
    assert gray.sum() > 5000, gray.sum()
