"""The dnnzip command end to end, and every bad input of issue 2: one clear line, exit ≠ 0,
no partial output, input untouched."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import digest, leftovers
from safetensors.torch import load_file, save_file

import dnnzip
from dnnzip.cli import main


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_compress_info_decompress(tmp_path, model_file, state_dict, capsys):
    before = digest(model_file)
    out = tmp_path / "m.dnnz"
    code, text, _ = run(
        ["compress", model_file, "-o", out, "--sparsity", "0.8", "--fc-bits", "4"], capsys
    )
    assert code == 0 and "total:" in text and "Huffman" in text
    assert digest(model_file) == before
    code, text, _ = run(["info", out, "--json"], capsys)
    info = json.loads(text)
    rows = {r["name"]: r for r in info["tensors"]}
    assert rows["fc1.weight"]["codec"] == "deepcompression"
    assert rows["fc1.weight"]["stats"]["distinct"] <= 17
    assert rows["fc1.bias"]["codec"] == "raw"
    assert info["totals"]["compressed_bytes"] == out.stat().st_size
    restored = tmp_path / "r.safetensors"
    code, _, _ = run(["decompress", out, "-o", restored], capsys)
    assert code == 0
    back = load_file(str(restored))
    assert set(back) == set(state_dict)
    for k, v in state_dict.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape
        if v.dim() < 2:
            assert torch.equal(back[k], v), k  # passthrough is lossless
    assert float((back["fc1.weight"] == 0).float().mean()) == pytest.approx(0.8, abs=0.01)
    pt = tmp_path / "r.pt"
    assert run(["decompress", out, "-o", pt], capsys)[0] == 0
    loaded = torch.load(pt, weights_only=True)
    assert all(torch.equal(loaded[k], back[k]) for k in back)


def test_python_api_mirrors_cli(tmp_path, state_dict):
    report = dnnzip.compress(state_dict, tmp_path / "a.dnnz", bits=3, progress=False)
    assert report.ratio > 3
    with dnnzip.open(tmp_path / "a.dnnz") as f:
        assert set(f.names) == set(state_dict)
        q = f.read_quantized("fc1.weight")
        assert q.codebook.size <= 9
        np.testing.assert_array_equal(q.dequantize(), f.read("fc1.weight"))
    restored = dnnzip.decompress(tmp_path / "a.dnnz")
    assert restored["emb.weight"].dtype == torch.bfloat16


def test_keep_regex_and_global_sparsity(tmp_path, model_file, capsys):
    out = tmp_path / "k.dnnz"
    code, text, _ = run(
        ["compress", model_file, "-o", out, "--keep", "^emb", "--global-sparsity", "0.5", "--json"],
        capsys,
    )
    rows = {r["name"]: r for r in json.loads(text)["tensors"]}
    assert rows["emb.weight"]["codec"] == "raw"
    kept = sum(
        r["stats"]["sparsity"] * np.prod(r["shape"])
        for r in rows.values()
        if r["stats"].get("sparsity") is not None
    )
    total = sum(np.prod(r["shape"]) for r in rows.values() if r["codec"] == "deepcompression")
    assert kept / total == pytest.approx(0.5, abs=0.01)


def expect_error(argv, capsys, pattern):
    code, out, err = run(argv, capsys)
    assert code != 0
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("dnnzip: error:"), err
    assert pattern in lines[0], lines[0]
    return lines[0]


def test_missing_and_not_a_model(tmp_path, capsys):
    expect_error(["compress", tmp_path / "nope.pt", "-o", tmp_path / "o.dnnz"], capsys, "nope.pt")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 100)
    expect_error(["compress", junk, "-o", tmp_path / "o.dnnz"], capsys, "junk.safetensors")
    pickle = tmp_path / "junk.pt"
    pickle.write_bytes(b"garbage that is no pickle\n")
    line = expect_error(["compress", pickle, "-o", tmp_path / "o.dnnz"], capsys, "junk.pt")
    # the cause, and never torch's advice to retry with weights_only=False
    assert "weights-only unpickler" in line and "weights_only" not in line
    assert not (tmp_path / "o.dnnz").exists() and leftovers(tmp_path) == []


def test_damaged_containers(tmp_path, model_file, capsys):
    good = tmp_path / "g.dnnz"
    assert run(["compress", model_file, "-o", good, "-q"], capsys)[0] == 0
    data = good.read_bytes()
    trunc = tmp_path / "t.dnnz"
    trunc.write_bytes(data[: len(data) // 2])
    expect_error(["info", trunc], capsys, "truncated")
    with dnnzip.open(good) as f:
        off = f.entry("fc1.weight")["offset"] + 10
    flipped = bytearray(data)
    flipped[off] ^= 0xFF
    bad = tmp_path / "f.dnnz"
    bad.write_bytes(bytes(flipped))
    line = expect_error(["decompress", bad, "-o", tmp_path / "x.safetensors"], capsys, "checksum")
    assert "fc1.weight" in line
    assert not (tmp_path / "x.safetensors").exists() and leftovers(tmp_path) == []
    magic = tmp_path / "m.dnnz"
    magic.write_bytes(b"XXXX" + data[4:])
    expect_error(["info", magic], capsys, "bad magic")
    version = tmp_path / "v.dnnz"
    version.write_bytes(data[:4] + b"\x07\x00" + data[6:])
    expect_error(["info", version], capsys, "version 7.0")


def test_refuses_to_overwrite(tmp_path, model_file, capsys):
    out = tmp_path / "o.dnnz"
    out.write_bytes(b"mine")
    expect_error(["compress", model_file, "-o", out], capsys, "--force")
    assert out.read_bytes() == b"mine"
    assert run(["compress", model_file, "-o", out, "--force", "-q"], capsys)[0] == 0
    restored = tmp_path / "r.safetensors"
    restored.write_bytes(b"also mine")
    expect_error(["decompress", out, "-o", restored], capsys, "--force")
    assert restored.read_bytes() == b"also mine"


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["--method", "zip"], "unknown method 'zip'"),
        (["--bits", "0"], "bits must be an integer in 1..16"),
        (["--sparsity", "1.2"], "sparsity must be in [0, 1)"),
        (["--keep", "("], "not a valid regular expression"),
    ],
)
def test_impossible_options(tmp_path, model_file, capsys, args, pattern):
    expect_error(["compress", model_file, "-o", tmp_path / "o.dnnz", *args], capsys, pattern)
    assert not (tmp_path / "o.dnnz").exists()


def test_nan_weights_are_refused_naming_the_tensor(tmp_path, state_dict, capsys):
    state_dict["fc1.weight"][3, 4] = float("inf")
    path = tmp_path / "nan.safetensors"
    save_file(state_dict, str(path))
    before = digest(path)
    line = expect_error(["compress", path, "-o", tmp_path / "o.dnnz"], capsys, "NaN/Inf")
    assert "fc1.weight" in line
    assert (
        not (tmp_path / "o.dnnz").exists() and leftovers(tmp_path) == [] and digest(path) == before
    )


def test_console_script_exit_codes(tmp_path):
    """The installed entry point: argparse errors exit 2, our errors exit 1."""
    ok = subprocess.run(
        [sys.executable, "-m", "dnnzip.cli", "--version"], capture_output=True, text=True
    )
    assert ok.returncode == 0 and "dnnzip" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "dnnzip.cli", "info", str(tmp_path / "none.dnnz")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode == 1 and bad.stderr.startswith("dnnzip: error:")
    usage = subprocess.run([sys.executable, "-m", "dnnzip.cli", "compress"], capture_output=True)
    assert usage.returncode == 2


def test_deepcabac_method_from_the_cli(tmp_path, model_file, state_dict, capsys):
    out = tmp_path / "c.dnnz"
    code, text, _ = run(
        ["compress", model_file, "-o", out, "--method", "deepcabac", "--min-snr", "30", "--json"],
        capsys,
    )
    assert code == 0
    rows = {r["name"]: r for r in json.loads(text)["tensors"]}
    assert rows["fc1.weight"]["codec"] == "deepcabac"
    back = dnnzip.decompress(out, progress=False)
    coded = [k for k in rows if rows[k]["codec"] == "deepcabac"]
    energy = sum(float((state_dict[k].double() ** 2).sum()) for k in coded)
    err = sum(float(((state_dict[k].double() - back[k].double()) ** 2).sum()) for k in coded)
    assert 10 * np.log10(energy / err) >= 29.9  # SNR over all coded weights meets the target
    expect_error(
        ["compress", model_file, "-o", tmp_path / "d.dnnz", "--method", "deepcabac", "--bits", "4"],
        capsys, "do not apply",
    )  # fmt: skip
    expect_error(
        ["compress", model_file, "-o", tmp_path / "e.dnnz", "--step", "0.01"], capsys, "step"
    )


def test_nonweight_qp_flag(tmp_path, model_file, state_dict, capsys):
    out = tmp_path / "n.dnnz"
    code, text, _ = run(["compress", model_file, "-o", out, "--method", "deepcabac", "--qp", "-24",
                         "--nonweight-qp", "-40", "--json"], capsys)
    assert code == 0
    rows = {r["name"]: r for r in json.loads(text)["tensors"]}
    vectors = [k for k, v in state_dict.items() if v.dim() == 1 and v.dtype.is_floating_point]
    assert vectors and all(rows[k]["codec"] in ("deepcabac", "raw") for k in vectors)
    assert any(rows[k]["codec"] == "deepcabac" for k in vectors if state_dict[k].numel() >= 64)
    back = dnnzip.decompress(out, progress=False)
    for k in vectors:
        assert float((back[k] - state_dict[k]).abs().max()) <= 2 ** (-10) / 2 * (1 + 1e-6)
