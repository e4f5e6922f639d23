"""PyTorch layers from CER/CSER, convert_model, and the convert / bench formats commands."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from dnnzip.codec import InvalidOption
from dnnzip.formats import CSER, commands
from dnnzip.formats._base import Triplets
from dnnzip.formats.cost import TimeModel
from dnnzip.nn import convert as convert_mod
from dnnzip.nn.convert import convert_model, pick_format
from dnnzip.nn.modules import CSERConv2d, CSERLinear


def _quantize_(module: nn.Module, sparsity: float = 0.8, levels: int = 7, seed: int = 0) -> None:
    """Prune + quantize every weight in place (a handful of distinct values per layer)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() < 2:
                continue
            p.copy_(torch.randn(p.shape, generator=g))
            keep = torch.rand(p.shape, generator=g) >= sparsity
            step = 0.1
            p.copy_(torch.clamp(torch.round(p / step), -levels, levels) * step * keep)


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.conv_grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.fc1 = nn.Linear(8 * 4 * 4, 40)
        self.norm = nn.LayerNorm(40)
        self.fc2 = nn.Linear(40, 10, bias=False)

    def forward(self, x):
        x = self.conv_grouped(torch.relu(self.conv(x)))
        return self.fc2(self.norm(torch.relu(self.fc1(x.flatten(1)))))


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_linear_matches_dense_for_any_leading_shape():
    lin = nn.Linear(50, 30)
    _quantize_(lin)
    for fmt in ("cser", "cer", "csr", "dense"):
        layer = CSERLinear.from_linear(lin, fmt)
        assert layer.format == fmt
        with torch.no_grad():
            for shape in [(1, 50), (7, 50), (2, 3, 50), (50,)]:
                x = torch.randn(shape)
                _close(layer(x), lin(x))


def test_conv_matches_dense():
    conv = nn.Conv2d(3, 6, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2))
    _quantize_(conv)
    layer = CSERConv2d.from_conv(conv)
    with torch.no_grad():
        x = torch.randn(2, 3, 9, 8)
        _close(layer(x), conv(x))
    with pytest.raises(InvalidOption, match="groups"):
        CSERConv2d.from_conv(nn.Conv2d(4, 4, 3, groups=2))


def test_layers_refuse_bad_input():
    lin = nn.Linear(5, 3)
    layer = CSERLinear.from_linear(lin)
    with pytest.raises(InvalidOption, match="features"):
        layer(torch.zeros(2, 6))
    with pytest.raises(InvalidOption, match="inference-only"):
        layer(torch.zeros(2, 5, requires_grad=True))
    with pytest.raises(InvalidOption, match="dtype"), torch.no_grad():
        layer(torch.zeros(2, 5, dtype=torch.int64))
    with pytest.raises(InvalidOption, match="bias"):
        CSERLinear(CSER.from_dense(np.zeros((3, 5), np.float32)), torch.zeros(4))


@pytest.mark.parametrize("fmt", ["cser", "cer", "csr", "auto"])
def test_convert_model_keeps_outputs(fmt):
    model = Small().eval()
    _quantize_(model)
    report = []
    converted = convert_model(model, fmt, report=report)
    assert isinstance(model.fc1, nn.Linear)  # the original is untouched
    swapped = {c.name for c in report if c.format != "dense"}
    if fmt != "auto":
        assert swapped == {"conv", "fc1", "fc2"}
        assert isinstance(converted.fc1, CSERLinear) and converted.fc1.format == fmt
        assert isinstance(converted.conv, CSERConv2d)
    assert isinstance(converted.conv_grouped, nn.Conv2d)  # groups=2: kept
    assert isinstance(converted.norm, nn.LayerNorm)
    with torch.no_grad():
        x = torch.randn(3, 3, 8, 8)
        _close(converted(x), model(x))


def test_auto_keeps_dense_where_the_model_says_dense_wins():
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    _quantize_(model[0], sparsity=0.0)  # dense levels
    _quantize_(model[2], sparsity=0.95)
    slow_sparse = TimeModel({"dense": (1e10, 3e10, 6e10), "csr": (2e9, 5e9, 5e9),
                             "cser": (3e9, 6e9, 6e9)})
    report = []
    converted = convert_model(model, "auto", time_model=slow_sparse, report=report, settle=None)
    assert isinstance(converted[0], nn.Linear)
    assert isinstance(converted[2], CSERLinear) and converted[2].format == "cser"
    assert [c.format for c in report] == ["dense", "cser"]
    # a float layer (one distinct value per weight) is never converted
    floaty = nn.Linear(40, 40)
    report = []
    out = convert_model(nn.Sequential(floaty), "cser", report=report)
    assert isinstance(out[0], nn.Linear) and "distinct" in report[0].reason
    with pytest.raises(InvalidOption, match="unknown format"):
        convert_model(model, "coo")


def test_close_predictions_are_settled_by_timing_both_formats_on_the_layer(monkeypatch):
    # CSR and CSER predicted 1.2x apart: within SETTLE_FACTOR, so both are timed on the
    # layer and the measured-faster one (here, by a fake timer, the predicted runner-up) wins
    rates = {"dense": (1e9, 3e9, 6e9), "csr": (5e9, 1e10, 1e10), "cser": (6e9, 1.2e10, 1.3e10)}
    model = TimeModel(rates)
    rng = np.random.default_rng(5)
    w = (rng.integers(-7, 8, (60, 80)) * (rng.random((60, 80)) < 0.1)).astype(np.float32)
    t = Triplets.from_dense(w)
    timed = []

    def fake_median_times(ways, rounds, block):
        ys = [np.asarray(way()) for way in ways]  # both run the same product
        assert ys[0].shape == (60,)
        np.testing.assert_allclose(ys[0], ys[1], rtol=1e-5, atol=1e-5)
        timed.append(len(ways))
        return (2.0, 1.0), ys[1]

    monkeypatch.setattr(convert_mod, "median_times", fake_median_times)
    fmt, pred, measured = pick_format(t, 1, model)
    assert sorted(pred, key=pred.get)[:2] == ["cser", "csr"] and timed == [2]
    assert fmt == "csr" and measured == {"cser": 2.0, "csr": 1.0}
    # settle=None, or predictions further apart than the factor: the model alone decides
    assert pick_format(t, 1, model, settle=None) == ("cser", pred, {})
    assert pick_format(t, 1, model, settle=1.1) == ("cser", pred, {})
    assert timed == [2]
    report = []
    lin = nn.Linear(80, 60, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(w))
    out = convert_model(lin, "auto", time_model=model, report=report)
    assert isinstance(out, CSERLinear) and out.format == "csr"
    assert report[0].measured_s == {"cser": 2.0, "csr": 1.0}
    assert report[0].reason.startswith("measured fastest")
    for bad in (0.5, -1.0, float("nan"), float("inf")):
        with pytest.raises(InvalidOption, match="settle"):
            pick_format(t, 1, model, settle=bad)
        with pytest.raises(InvalidOption, match="settle"):
            convert_model(nn.Linear(3, 3), "auto", settle=bad)


def test_convert_model_on_a_bare_layer():
    lin = nn.Linear(20, 10)
    _quantize_(lin)
    out = convert_model(lin, "cser")
    assert isinstance(out, CSERLinear)


def test_convert_command_round_trip(tmp_path, capsys):
    import dnnzip

    model = Small()
    _quantize_(model, sparsity=0.9)
    src = tmp_path / "m.dnnz"
    dnnzip.compress(model.state_dict(), src, method="deepcompression", sparsity=0.9, bits=4,
                    progress=False)
    out = tmp_path / "m.pt"
    assert commands.main(["convert", str(src), "--format", "cser", "-o", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    converted = {r["name"]: r for r in report["tensors"] if r["format"] == "cser"}
    assert "fc1.weight" in converted
    matrices, tensors = commands.load_converted(out)
    with dnnzip.open(src) as reader:
        for name, mat in matrices.items():
            stored = reader.read(name)
            np.testing.assert_array_equal(mat.toarray(), stored.reshape(stored.shape[0], -1))
    assert "fc1.bias" in tensors
    # "auto": each matrix in the format picked for it (the one timed, when it was timed),
    # still equal to the stored levels
    auto = tmp_path / "auto.pt"
    assert commands.main(["convert", str(src), "--format", "auto", "-o", str(auto), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {r["format"] for r in report["tensors"]} <= {"dense", "csr", "cser", "kept"}
    matrices, _ = commands.load_converted(auto)
    assert "fc1.weight" in matrices
    with dnnzip.open(src) as reader:
        for name, mat in matrices.items():
            stored = reader.read(name)
            np.testing.assert_array_equal(mat.toarray(), stored.reshape(stored.shape[0], -1))
    # the output exists: refused without --force, no partial file left behind
    assert commands.main(["convert", str(src), "-o", str(out)]) == 1
    assert "exists" in capsys.readouterr().err
    assert commands.main(["convert", str(tmp_path / "missing.dnnz")]) == 1
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(dnnzip.DnnzipError, match="not a converted model"):
        commands.load_converted(bad)


def test_bench_formats_command(tmp_path, capsys):
    from safetensors.torch import save_file

    rng = torch.Generator().manual_seed(0)
    path = tmp_path / "w.safetensors"
    save_file({"a.weight": torch.randn(64, 96, generator=rng), "a.bias": torch.zeros(64)}, path)
    rc = commands.main(["bench", "formats", str(path), "--batch", "1", "8", "--repeats", "3",
                        "--json"])
    assert rc == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["batch"] for r in rows] == [1, 8]
    assert rows[0]["name"] == "a.weight" and 0.05 < rows[0]["density"] <= 0.11
    assert set(rows[0]["seconds"]) == {"dense", "scipy_csr", "csr", "cser"}
    assert commands.main(["bench", "formats", str(path), "--bits", "1"]) == 1
