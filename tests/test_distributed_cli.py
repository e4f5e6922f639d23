"""``train-demo`` subcommand (wired into the CLI by ``add_commands``) and option checks."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from dnnzip.codec import InvalidOption
from dnnzip.distributed import SBCAverager, SBCState
from dnnzip.distributed.commands import add_commands


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dnnzip")
    add_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def test_train_demo_parses_the_issue_example():
    args = _parser().parse_args(
        ["train-demo", "--workers", "2", "--method", "sbc", "--p", "0.01", "--delay", "10"])
    assert (args.workers, args.method, args.p, args.delay) == (2, "sbc", 0.01, 10)
    assert args.run is args.func


@pytest.mark.parametrize("argv", [["--p", "1.5"], ["--p", "0"], ["--steps", "15", "--delay", "10"]])
def test_train_demo_rejects_bad_options_with_one_line(argv, capsys):
    args = _parser().parse_args(["train-demo", *argv, "--no-baseline"])
    assert args.run(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dnnzip train-demo: error:")


def test_state_and_averager_validate_options():
    model = torch.nn.Linear(3, 2)
    with pytest.raises(InvalidOption):
        SBCState(model, 0.01, warmup_steps=1)
    with pytest.raises(InvalidOption):
        SBCState(model, 0.0)
    with pytest.raises(InvalidOption):
        SBCState(model, 0.01, wire="smoke-signals")
    with pytest.raises(InvalidOption):
        SBCState(model, 0.01, nonfinite="ignore")
    with pytest.raises(InvalidOption):
        SBCState(model, 0.01, momentum=1.0)
    with pytest.raises(InvalidOption):
        SBCAverager(model, 0.01, delay=0)


@pytest.mark.distributed
def test_train_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo.json"
    png = tmp_path / "demo.png"
    args = _parser().parse_args(
        ["train-demo", "--p", "0.05", "--delay", "5", "--steps", "40", "--hidden", "32",
         "--json", str(out), "--plot", str(png)])
    assert args.run(args) == 0
    report = json.loads(out.read_text())
    for run in report.values():
        assert run["max_replica_diff"] == 0.0
        assert run["accuracy"] > 50.0
    assert report["compressed"]["ledger"]["ratio_sent"] > 10 * report["dense"]["ledger"][
        "ratio_sent"]
    assert png.stat().st_size > 1000
    assert "dense all-reduce" in capsys.readouterr().out
