"""Long fuzzing of the DeepCABAC stream (the test suite keeps a short version).

For ``--minutes`` minutes: random level sequences (degenerate, Laplacian, huge, sparse) with
random geometry and coder options must round-trip bit-exactly, through both the lossless
level coder and the full codec (RDOQ / dependent quantization on random floats); then the
stream is damaged (bit flips, truncation, extension, random bytes, header edits) and the
decoder must either raise ``CorruptPayload`` or return exactly the original levels — never
crash, hang or return other values. Writes benchmarks/results/deepcabac_fuzz.json.

Run: ``flock /tmp/dnnzip-heavy.lock .venv/bin/python benchmarks/deepcabac_fuzz.py --minutes 3``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from dnnzip.codec import CorruptPayload  # noqa: E402
from dnnzip.coding import cabac  # noqa: E402
from dnnzip.methods.deepcabac import DeepCabacCodec  # noqa: E402
from dnnzip.quant.dependent import dq_recon  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def random_levels(rng):
    n = int(rng.choice([0, 1, 2, 17, 300, 5000, 40000]))
    kind = rng.integers(6)
    if kind == 0:
        return np.zeros(n, np.int32)
    if kind == 1:
        return np.full(n, rng.integers(-cabac.MAX_LEVEL, cabac.MAX_LEVEL + 1), np.int32)
    if kind == 2:
        return np.rint(rng.laplace(0, rng.uniform(0.1, 50), n)).astype(np.int32)
    if kind == 3:
        return rng.integers(-cabac.MAX_LEVEL, cabac.MAX_LEVEL + 1, n).astype(np.int32)
    if kind == 4:
        v = np.rint(rng.laplace(0, 3, n)).astype(np.int32)
        v[rng.random(n) < 0.9] = 0
        return v
    return (rng.integers(0, 2, n) * 2 - 1).astype(np.int32) * cabac.MAX_LEVEL


def damage(rng, data):
    d = bytearray(data)
    kind = rng.integers(5)
    if kind == 0 and len(d):
        for _ in range(rng.integers(1, 8)):
            d[rng.integers(len(d))] ^= 1 << rng.integers(8)
    elif kind == 1:
        d = d[: rng.integers(len(d) + 1)]
    elif kind == 2:
        d += rng.integers(0, 256, rng.integers(1, 16)).astype(np.uint8).tobytes()
    elif kind == 3 and len(d) > cabac.HEADER.size:
        start = rng.integers(cabac.HEADER.size, len(d))
        stop = min(len(d), start + rng.integers(1, 64))
        d[start:stop] = rng.integers(0, 256, stop - start).astype(np.uint8).tobytes()
    elif len(d) >= cabac.HEADER.size:
        d[rng.integers(cabac.HEADER.size)] = rng.integers(256)
    return bytes(d)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    stop = time.time() + 60 * args.minutes
    stats = {"round_trips": 0, "codec_round_trips": 0, "damaged": 0, "rejected": 0,
             "decoded_identical": 0, "failures": []}
    while time.time() < stop:
        levels = random_levels(rng)
        params = cabac.StreamParams(
            n=levels.size, row_len=int(rng.integers(1, 600)), g=int(rng.integers(0, 31)),
            ctx_mode=int(rng.integers(2)), dq=bool(rng.integers(2)),
            chunk=int(rng.choice([1, 7, 1000, 1 << 12, 1 << 17])),
            shifts=(int(rng.integers(1, 9)), int(rng.integers(1, 13))))
        data, _ = cabac.encode_levels(levels, params)
        expect = dq_recon(levels, params.chunk) if params.dq else levels
        _, r = cabac.decode_levels(data)
        if not np.array_equal(r, expect):
            stats["failures"].append({"what": "round trip", "params": repr(params)})
        stats["round_trips"] += 1
        # the full codec on random floats
        w = (rng.standard_normal(int(rng.integers(1, 3000))) * rng.uniform(0.01, 10)).astype(
            np.float32)
        codec = DeepCabacCodec(step=float(rng.uniform(1e-3, 1)), lam=float(rng.uniform(0, 1)),
                               dq=bool(rng.integers(2)), chunk=int(rng.integers(1, 2000)))
        cdata = codec.encode(w)
        if not np.array_equal(codec.decode(cdata, w.shape).reshape(-1),
                              codec.last_info.recon.astype(np.float32) * np.float32(codec.step)):
            stats["failures"].append({"what": "codec round trip", "config": codec.get_config()})
        stats["codec_round_trips"] += 1
        for _ in range(4):
            bad = damage(rng, data)
            stats["damaged"] += 1
            try:
                _, r2 = cabac.decode_levels(bad)
            except CorruptPayload:
                stats["rejected"] += 1
                continue
            if np.array_equal(r2, expect):
                stats["decoded_identical"] += 1
            else:
                stats["failures"].append({"what": "silent wrong decode", "params": repr(params)})
    stats["minutes"] = args.minutes
    print(json.dumps({k: v if k != "failures" else len(v) for k, v in stats.items()}, indent=1))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "deepcabac_fuzz.json").write_text(json.dumps(stats, indent=1))
    if stats["failures"]:
        raise SystemExit(f"{len(stats['failures'])} failures")


if __name__ == "__main__":
    main()
