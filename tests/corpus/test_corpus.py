"""Every case of the bad-input corpus through the CLI: exit code, one line naming the file, no traceback,
no file the user had changed, no partial file left, nothing written but what the case may write."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
from badinput import CASES, Case  # noqa: E402

from neurofuse.cli import main  # noqa: E402


def snapshot(root: Path) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def error_lines(stderr: str) -> list[str]:
    """Lines of stderr that are neither one-line warnings nor progress bars (as a terminal shows them)."""
    shown = [ln.split("\r")[-1] for ln in stderr.split("\n")]
    return [ln for ln in shown if ln.strip() and not ln.startswith("warning: ") and "%|" not in ln]


def test_corpus_is_large_enough():
    assert len(CASES) >= 60


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_case(name, tmp_path):
    c: Case = CASES[name](tmp_path)
    if c.skip:
        pytest.skip(c.skip)
    before = snapshot(tmp_path)
    res = CliRunner().invoke(main, [str(a) for a in c.args])
    after = snapshot(tmp_path)
    out, err = res.stdout, res.stderr
    assert "Traceback" not in out + err, err
    assert res.exit_code == c.code, f"exit {res.exit_code} != {c.code}\n{out}\n{err}\n{res.exception!r}"
    lines = error_lines(err)
    if c.code == 0:
        assert not [ln for ln in lines if ln.startswith("error")], err
    else:
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        for needle in c.needles:
            assert str(needle) in lines[0], (needle, lines[0])
    changed = [p for p in before if p in after and before[p] != after[p] and not _allowed(p, c, tmp_path)]
    assert not changed, f"files changed: {changed}"
    assert not [p for p in before if p not in after and not _allowed(p, c, tmp_path)], "a user file was removed"
    new = [p for p in after if p not in before]
    assert not [p for p in new if ".partial-" in p.name or p.name.endswith(".lock")], new
    assert all(_allowed(p, c, tmp_path) for p in new), f"unexpected files: {new}"
    if c.check is not None:
        c.check(tmp_path, out)


def _allowed(p: Path, c: Case, root: Path) -> bool:
    rel = p.relative_to(root)
    return any(rel.match(pattern) for pattern in c.may_create) or (
        p.name.startswith(".") and any(rel.parent.match(str(Path(pat).parent)) for pat in c.may_create)
    )
