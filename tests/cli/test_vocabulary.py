"""One vocabulary of options across commands; old spellings still parse but are not shown."""

from __future__ import annotations

import click
import pytest

from neurofuse.cli import main

LEARNED = ("fuse", "fuse-dir", "fuse-brats", "benchmark")
PROGRESS = ("fuse-dir", "fuse-brats", "benchmark", "evaluate")
SHARDED = ("fuse-dir", "fuse-brats", "benchmark")


def _opts(name: str) -> dict[str, click.Option]:
    cmd = main.commands[name]
    return {o: p for p in cmd.params if isinstance(p, click.Option) for o in p.opts}


@pytest.mark.parametrize("name", sorted(main.commands))
def test_output_is_dash_o_or_dash_dash_output(name):
    opts = _opts(name)
    ctx = click.Context(main.commands[name], info_name=name)
    shown = main.commands[name].get_help(ctx)
    if "-o" in opts:
        assert opts["-o"] is opts.get("--output"), f"{name}: -o is not --output"
        assert "-o, --output" in shown
    assert "--out " not in shown and "--clip-percentiles" not in shown


def test_shared_flags():
    for name in LEARNED:
        assert {"--pair", "--device", "--precision"} <= set(_opts(name)), name
    for name in PROGRESS:
        assert "--no-progress" in _opts(name), name
    for name in SHARDED:
        assert {"--num-shards", "--shard-index"} <= set(_opts(name)), name
    for name in ("fuse", "fuse-dir", "fuse-brats", "classify"):
        assert "--clip" in _opts(name) and "--clip-percentiles" in _opts(name), name  # old spelling parses
    for name in ("fuse", "fuse-dir", "benchmark", "curves", "train"):
        assert "--out" in _opts(name), name  # old spelling parses


def test_device_flags_refuse_classical_methods(tmp_path):
    from click.testing import CliRunner

    res = CliRunner().invoke(main, ["fuse", "a.png", "b.png", "-o", str(tmp_path / "f.png"), "-m", "pca",
                                    "--device", "cuda"])
    assert res.exit_code == 2 and "--device: for learned methods only" in res.output
