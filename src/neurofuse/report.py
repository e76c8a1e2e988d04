"""`neurofuse report`: one self-contained HTML page (no network: images inlined as data URIs, CSS and
JavaScript inline) for a `benchmark` or `evaluate` result folder.

It shows
- every summary table (`summary_<preset>.csv` of a benchmark, `*_summary.csv` of evaluate) and the
  per-image table, sortable by clicking a column header (`#sort=COLUMN` in the URL sorts on load);
- a benchmark's pairs side by side, A | B | fused, with a method picker (`images/<method>/<id>.png`);
- the bar chart and the learning curves where the folder holds them (`bars.png`, `curves*.png`);
- for volumes given with `volumes=` (name -> NIfTI path, all on one grid), a slice slider over the axial,
  coronal and sagittal planes (slices pre-rendered as PNG, so the page needs no decoder).
"""

from __future__ import annotations

import base64
import csv
import html
import io as _io
import json
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from neurofuse.errors import InputError
from neurofuse.io import natural_key, read_image, write_text

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#eef;cursor:pointer;user-select:none}
th.sorted-asc::after{content:" \\25B2"}th.sorted-desc::after{content:" \\25BC"}
td:first-child,th:first-child{text-align:left}
.pairs{display:flex;flex-wrap:wrap;gap:14px}.pair{text-align:center;font-size:12px}
.pair img,.vol img{width:200px;height:auto;image-rendering:pixelated;border:1px solid #ddd;margin:1px}
.scroll{max-height:420px;overflow:auto;display:inline-block}
"""

_JS = """
function sortTable(th){
  const table=th.closest('table'), idx=[...th.parentNode.children].indexOf(th);
  const asc=!th.classList.contains('sorted-asc');
  table.querySelectorAll('th').forEach(h=>h.classList.remove('sorted-asc','sorted-desc'));
  th.classList.add(asc?'sorted-asc':'sorted-desc');
  const body=table.tBodies[0], rows=[...body.rows];
  const key=r=>{const t=r.cells[idx].dataset.v??r.cells[idx].textContent; const n=parseFloat(t);
                return isNaN(n)?t:n;};
  rows.sort((a,b)=>{const x=key(a),y=key(b); const c=(typeof x==='number'&&typeof y==='number')?x-y:
                    String(x).localeCompare(String(y)); return asc?c:-c;});
  rows.forEach(r=>body.appendChild(r));
}
function pickMethod(sel){
  document.querySelectorAll('img.fused').forEach(img=>{img.src=IMAGES[sel.value][img.dataset.id];});
  document.querySelectorAll('.fused-title').forEach(t=>{t.textContent=sel.value;});
}
function showSlice(vol){
  const plane=document.getElementById('plane-'+vol).value, k=+document.getElementById('slice-'+vol).value;
  const n=SLICES[vol][Object.keys(SLICES[vol])[0]][plane].length;
  const i=Math.min(k,n-1); document.getElementById('slice-'+vol).max=n-1;
  document.getElementById('label-'+vol).textContent=plane+' '+i+'/'+(n-1);
  document.querySelectorAll('img.vol-'+vol).forEach(img=>{img.src=SLICES[vol][img.dataset.name][plane][i];});
}
window.addEventListener('load',()=>{
  document.querySelectorAll('th').forEach(th=>th.addEventListener('click',()=>sortTable(th)));
  const m=location.hash.match(/sort=([^&]+)/);
  if(m){const want=decodeURIComponent(m[1]);
        const th=[...document.querySelectorAll('th')].find(h=>h.textContent.trim()===want); if(th) sortTable(th);}
  document.querySelectorAll('select.method').forEach(pickMethod);
  Object.keys(typeof SLICES==='undefined'?{}:SLICES).forEach(showSlice);
});
"""


def _png_uri(arr01: np.ndarray) -> str:
    buf = _io.BytesIO()
    PILImage.fromarray(np.round(np.clip(arr01, 0, 1) * 255).astype(np.uint8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _file_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _table(rows: list[dict[str, str]], caption: str, limit: int = 2000) -> str:
    if not rows:
        return ""
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = []
    for r in rows[:limit]:
        cells = []
        for c in cols:
            v = r.get(c, "")
            try:
                shown = f"{float(v):.4g}" if v not in ("", None) and not str(v).isdigit() else v
            except ValueError:
                shown = v
            cells.append(f'<td data-v="{html.escape(str(v))}">{html.escape(str(shown))}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    more = f"<p>first {limit} of {len(rows)} rows</p>" if len(rows) > limit else ""
    return (f"<h3>{html.escape(caption)}</h3><div class=scroll><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></div>{more}")


def _pairs_section(folder: Path) -> tuple[str, dict]:
    """Side-by-side A | B | fused for the pairs of `images/`, with a method <select>."""
    root = folder / "images"
    if not (root / "A").is_dir():
        return "", {}
    methods = sorted((d.name for d in root.iterdir() if d.is_dir() and d.name not in ("A", "B")), key=natural_key)
    ids = sorted((p.stem for p in (root / "A").glob("*.png")), key=natural_key)
    if not methods or not ids:
        return "", {}
    images = {m: {i: _file_uri(root / m / f"{i}.png") for i in ids if (root / m / f"{i}.png").is_file()}
              for m in methods}
    options = "".join(f'<option value="{html.escape(m)}">{html.escape(m)}</option>' for m in methods)
    cells = []
    for i in ids:
        a, b = _file_uri(root / "A" / f"{i}.png"), _file_uri(root / "B" / f"{i}.png")
        cells.append(f'<div class=pair><div>{html.escape(i)}: A | B | <span class=fused-title></span></div>'
                     f'<img alt="A {html.escape(i)}" src="{a}"><img alt="B {html.escape(i)}" src="{b}">'
                     f'<img class=fused data-id="{html.escape(i)}" alt="fused {html.escape(i)}" src=""></div>')
    section = (f'<h2>Images</h2><label>method <select class=method onchange="pickMethod(this)">{options}</select>'
               f'</label><div class=pairs>{"".join(cells)}</div>')
    return section, images


def volume_slices(volumes: dict[str, str | Path], max_slices: int = 64) -> dict[str, dict[str, list[str]]]:
    """name -> plane -> PNG data URIs of (up to `max_slices` evenly spaced) slices, each volume min-max
    scaled; all volumes must share one shape (fused and sources on one grid)."""
    arrays = {}
    for name, path in volumes.items():
        img = read_image(path)
        if img.spatial_dims != 3:
            raise InputError(f"{path}: not a volume")
        a = img.array.astype(np.float32)
        lo, hi = float(a.min()), float(a.max())
        arrays[name] = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    shapes = {a.shape for a in arrays.values()}
    if len(shapes) != 1:
        raise InputError(f"volumes of different shapes {sorted(shapes)}: give volumes on one grid")
    out: dict[str, dict[str, list[str]]] = {}
    for name, a in arrays.items():
        planes = {}
        for plane, axis in (("axial", 2), ("coronal", 1), ("sagittal", 0)):
            idx = np.unique(np.linspace(0, a.shape[axis] - 1, min(max_slices, a.shape[axis])).round().astype(int))
            planes[plane] = [_png_uri(np.rot90(np.take(a, int(k), axis=axis))) for k in idx]
        out[name] = planes
    return out


def _volume_section(slices: dict[str, dict[str, list[str]]], key: str = "v") -> str:
    if not slices:
        return ""
    first = next(iter(slices.values()))
    imgs = "".join(f'<span class=pair><div>{html.escape(n)}</div><img class="vol-{key}" data-name="{html.escape(n)}" '
                   f'alt="{html.escape(n)}" src="{p["axial"][len(p["axial"]) // 2]}"></span>'
                   for n, p in slices.items())
    mid = len(first["axial"]) // 2
    return (f'<h2>Volumes</h2><div class=vol><select id="plane-{key}" onchange="showSlice(\'{key}\')">'
            '<option>axial</option><option>coronal</option><option>sagittal</option></select> '
            f'<input type=range id="slice-{key}" min=0 max={len(first["axial"]) - 1} value={mid} '
            f'oninput="showSlice(\'{key}\')"> <span id="label-{key}"></span><div class=pairs>{imgs}</div></div>')


def build_report(folder: str | Path, out: str | Path, volumes: dict[str, str | Path] | None = None,
                 title: str | None = None) -> Path:
    """Write the HTML report of a benchmark or evaluate result folder (see the module docstring)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    summaries = sorted(folder.glob("summary_*.csv")) + sorted(folder.glob("*_summary.csv"))
    per_image = [p for p in sorted(folder.glob("*.csv")) if p not in summaries
                 and p.name not in ("methods.csv", "split.csv")]
    if not summaries and not per_image and not volumes:
        raise InputError(f"{folder}: no benchmark or evaluate results (summary_*.csv, *_summary.csv) here")
    run = json.loads((folder / "run.json").read_text(encoding="utf-8")) if (folder / "run.json").is_file() else {}
    parts = [f"<h1>{html.escape(title or 'neurofuse report: ' + folder.name)}</h1>"]
    if run:
        parts.append(f"<p>data {html.escape(str(run.get('data')))}, split {html.escape(str(run.get('split')))}, "
                     f"{run.get('pairs')} pairs</p>")
    parts += [_table(_read_csv(p), p.stem.replace("_", " ")) for p in summaries]
    skipped = [r for r in _read_csv(folder / "methods.csv") if r.get("skipped")] if (folder / "methods.csv").is_file() \
        else []
    if skipped:
        parts.append("<h3>Skipped</h3><ul>" + "".join(
            f"<li><b>{html.escape(r['method'])}</b>: {html.escape(r['skipped'])}</li>" for r in skipped) + "</ul>")
    pairs, images = _pairs_section(folder)
    parts.append(pairs)
    slices = volume_slices(volumes) if volumes else {}
    parts.append(_volume_section(slices))
    for name in ["bars.png", *sorted(p.name for p in folder.glob("curves*.png"))]:
        if (folder / name).is_file():
            parts.append(f'<h2>{html.escape(Path(name).stem)}</h2><img style="max-width:100%" alt="{name}" '
                         f'src="{_file_uri(folder / name)}">')
    parts += [_table(_read_csv(p), p.stem.replace("_", " ")) for p in per_image]
    data = f"const IMAGES={json.dumps(images)};\nconst SLICES={json.dumps({'v': slices} if slices else {})};"
    page = (f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(folder.name)}</title>"
            f"<style>{_CSS}</style><script>{data}\n{_JS}</script></head><body>{''.join(parts)}</body></html>\n")
    return write_text(out, page)
