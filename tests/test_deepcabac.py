"""DeepCABAC codec and method: shapes, quantizers (plain, RDOQ, dependent), importance,
step-size search, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dnnzip.codec import CorruptPayload, InvalidOption, codec_from_config
from dnnzip.methods.deepcabac import DeepCabacCodec, DeepCabacMethod, encode_array, qp_to_step
from dnnzip.nn.importance import fisher_diagonal, output_sensitivity
from dnnzip.quant import stepsize


def gauss(shape, seed=0, scale=0.05):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def snr(a, b):
    d = a.astype(np.float64) - b
    return 10 * np.log10(np.sum(a.astype(np.float64) ** 2) / np.sum(d * d))


@pytest.mark.parametrize("shape", [(), (1,), (17,), (5, 3), (4, 3, 2), (3, 2, 2, 5),
                                   (2, 2, 1, 3, 4), (0, 4)])
@pytest.mark.parametrize("opts", [dict(lam=0.0, dq=False), dict(lam=0.2, dq=False),
                                  dict(lam=0.1, dq=True)])
def test_codec_round_trip_any_shape(shape, opts):
    w = gauss(shape, 1)
    codec = DeepCabacCodec(step=0.01, chunk=7, **opts)
    data = codec.encode(w)
    out = codec.decode(data, shape)
    assert out.shape == shape and out.dtype == np.float32
    np.testing.assert_array_equal(out.reshape(-1),
                                  codec.last_info.recon.astype(np.float32) * np.float32(0.01))
    if w.size:
        assert np.max(np.abs(out - w)) <= (0.01 if opts["dq"] else 0.005) * 2 + 1e-7
    q = codec.decode_quantized(data, shape)
    np.testing.assert_array_equal(q.dequantize(), out)
    rebuilt = codec_from_config(codec.get_config())
    np.testing.assert_array_equal(rebuilt.decode(data, shape), out)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(w=hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=4, max_side=9),
                    elements=st.floats(-100, 100, width=32)),
       step=st.floats(1e-3, 10), lam=st.sampled_from([0.0, 0.05, 0.5]), dq=st.booleans())
def test_hypothesis_codec_decodes_what_the_encoder_chose(w, step, lam, dq):
    codec = DeepCabacCodec(step=step, lam=lam, dq=dq, chunk=11)
    data = codec.encode(w)
    out = codec.decode(data, w.shape)
    np.testing.assert_array_equal(out.reshape(-1),
                                  codec.last_info.recon.astype(np.float32) * np.float32(step))


def test_float16_and_bfloat16_like_inputs_are_accepted():
    w = gauss((8, 8), 2).astype(np.float16)
    codec = DeepCabacCodec(step=0.01)
    out = codec.decode(codec.encode(w), w.shape)
    assert np.max(np.abs(out - w.astype(np.float32))) < 0.02


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_refused_with_the_name(bad):
    w = gauss((4, 4))
    w[1, 2] = bad
    with pytest.raises(InvalidOption, match="layer.x"):
        encode_array(w, 0.01, name="layer.x")
    with pytest.raises(InvalidOption):
        DeepCabacCodec(step=0.01).encode(w)


def test_bad_options_raise():
    for kw in (dict(step=0.0), dict(step=float("nan")), dict(step=1.0, g=-1),
               dict(step=1.0, ctx_mode=3), dict(step=1.0, chunk=0), dict(step=1.0, lam=-1),
               dict(step=1.0, shifts=(0, 4)), dict(step=1.0, importance_floor=2)):
        with pytest.raises(InvalidOption):
            DeepCabacCodec(**kw)
    for kw in (dict(step=1, qp=-3), dict(target_ratio=0.5), dict(max_error=2.0), dict(lam=-1),
               dict(qp=1e9), dict(chunk_size=0), dict(max_error=0.1, min_snr_db=20),
               dict(bits=4)):
        with pytest.raises(InvalidOption):
            DeepCabacMethod(**kw)
    DeepCabacMethod(bits=None, sparsity=None)  # options of other methods, left unset
    with pytest.raises(InvalidOption, match="too small"):
        encode_array(np.array([1e6], np.float32), 1e-6)


def test_wrong_shape_or_corrupt_payload_raises():
    w = gauss((30, 20))
    codec = DeepCabacCodec(step=0.005)
    data = codec.encode(w)
    with pytest.raises(CorruptPayload):
        codec.decode(data, (20, 30))
    with pytest.raises(CorruptPayload):
        codec.decode(data, (30, 21))
    with pytest.raises(CorruptPayload):
        codec.decode(data[:-3], w.shape)
    flipped = bytearray(data)
    flipped[-5] ^= 0x5A
    with pytest.raises(CorruptPayload):
        codec.decode(bytes(flipped), w.shape)


def test_rdoq_trades_distortion_for_rate():
    w = gauss((256, 256), 3)
    sizes, errs = [], []
    for lam in (0.0, 0.1, 0.4):
        data, info = encode_array(w, 0.005, lam=lam)
        sizes.append(len(data))
        errs.append(snr(w.reshape(-1), info.recon * 0.005))
    assert sizes[0] > sizes[1] > sizes[2]
    assert errs[0] > errs[1] > errs[2]


def _size_at_snr(w, target, **kw):
    """Bytes at the given SNR, interpolated over a step sweep."""
    pts = []
    for qp in np.arange(-40, -16, 1.0):
        data, info = encode_array(w, qp_to_step(qp), **kw)
        pts.append((snr(w.reshape(-1), info.recon * qp_to_step(qp)), len(data)))
    pts.sort()
    s, b = zip(*pts, strict=True)
    return float(np.interp(target, s, b))


def test_dependent_quantization_beats_scalar_at_equal_snr():
    w = gauss((384, 384), 4)
    plain = _size_at_snr(w, 30.0, lam=0.0, dq=False)
    dq = _size_at_snr(w, 30.0, lam=0.1, dq=True)
    assert dq < plain * 0.985  # ≈ 3% measured (the ~1 dB of a 4-state trellis)


def test_importance_moves_error_to_unimportant_weights():
    w = gauss((128, 128), 5)
    f = np.ones_like(w)
    f[:64] = 50.0  # the first half of the rows matters 50x more
    fn = f / f.mean()
    step, lam = 0.004, 0.3
    for dq in (False, True):
        plain_data, plain = encode_array(w, step, lam=lam, dq=dq)
        data, weighted = encode_array(w, step, lam=lam, dq=dq, importance=f,
                                      importance_floor=0.0)

        def cost(info, nbytes):
            # the objective both minimise: Σ F_i/F̄ (x − r)² + λ·bits, x = w/Δ
            r = info.recon.reshape(w.shape)
            return float(np.sum(fn * (w / step - r) ** 2)) + lam * 8 * nbytes

        assert cost(weighted, len(data)) < cost(plain, len(plain_data))
        imp = slice(0, 64)
        err_w = np.mean((w[imp] / step - weighted.recon.reshape(w.shape)[imp]) ** 2)
        err_p = np.mean((w[imp] / step - plain.recon.reshape(w.shape)[imp]) ** 2)
        assert err_w < err_p


def test_importance_offsets_follow_the_square_root_rule():
    off = stepsize.importance_offsets({"a": 1.0, "b": 16.0, "c": 0.0}, {"a": 10, "b": 10, "c": 5})
    assert off["a"] - off["b"] == pytest.approx(2 * np.log2(16))
    assert off["c"] == stepsize.OFFSET_LIMIT


def _tensors():
    return {"a": gauss((200, 64), 6), "b": gauss((64, 3, 3, 3), 7, 0.2), "c": gauss((5000,), 8)}


def _coded(method, tensors):
    method.prepare(tensors.items())
    total, err, ref = 0, 0.0, 0.0
    for name, a in tensors.items():
        codec = method.codec_for(name, a)
        data = codec.encode(a)
        total += len(data)
        r = codec.decode(data, a.shape)
        err += float(np.sum((a.astype(np.float64) - r) ** 2))
        ref += float(np.sum(a.astype(np.float64) ** 2))
    return total, err / ref


@pytest.mark.parametrize("dq", [False, True])
def test_target_ratio_search_meets_the_ratio(dq):
    t = _tensors()
    raw = sum(a.nbytes for a in t.values())
    m = DeepCabacMethod(target_ratio=8.0, dq=dq)
    total, _ = _coded(m, t)
    assert 7.6 <= raw / total <= 9.5
    assert m.describe()["search"]["kind"] == "ratio"


def test_max_error_search_meets_the_error():
    t = _tensors()
    m = DeepCabacMethod(min_snr_db=25.0)
    _, rel = _coded(m, t)
    assert 10 * np.log10(1 / rel) >= 24.7
    assert 10 * np.log10(1 / rel) <= 27.0


def test_impossible_ratio_is_reported():
    with pytest.raises(InvalidOption, match="not reachable"):
        _coded(DeepCabacMethod(target_ratio=10_000.0), _tensors())


def test_manual_step_and_qp():
    t = _tensors()
    m = DeepCabacMethod(qp=-24, dq=False)
    m.prepare(t.items())
    assert m.codec_for("a", t["a"]).step == pytest.approx(qp_to_step(-24))
    assert DeepCabacMethod(step=0.3).codec_for("a", t["a"]).step == 0.3
    # no prepare and no target: per-tensor default error
    c = DeepCabacMethod().codec_for("a", t["a"])
    assert 0 < c.step < 0.05


def test_fit_to_metric_finds_the_coarsest_acceptable_step():
    t = {"a": gauss((64, 64), 9)}

    def metric(restored):
        return snr(t["a"], restored["a"])

    m = DeepCabacMethod(dq=True)
    res = m.fit_to_metric(t, metric, min_metric=30.0, qp_range=(-48, -8), tol=0.5)
    assert res.achieved >= 30.0
    # the pipeline's prepare() afterwards keeps the QP found (no new search)
    m.prepare(t.items())
    assert m.global_qp == res.qp
    c = m.codec_for("a", t["a"])
    assert metric({"a": c.decode(c.encode(t["a"]), (64, 64))}) == pytest.approx(res.achieved)
    # a slightly coarser step must break the budget
    m.global_qp = res.qp + 1.0
    c = m.codec_for("a", t["a"])
    assert metric({"a": c.decode(c.encode(t["a"]), (64, 64))}) < 30.5
    with pytest.raises(InvalidOption):
        DeepCabacMethod().fit_to_metric(t, metric, min_metric=500.0, qp_range=(-48, -8))


def test_fisher_and_output_sensitivity_on_a_tiny_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    x = torch.randn(40, 6)
    y = torch.randint(0, 3, (40,))
    batches = [(x[i:i + 10], y[i:i + 10]) for i in range(0, 40, 10)]

    def loss_fn(m, b):
        return torch.nn.functional.cross_entropy(m(b[0]), b[1])

    f = fisher_diagonal(model, loss_fn, batches)
    assert set(f) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    manual = torch.zeros(3, 5)
    for b in batches:
        model.zero_grad()
        loss_fn(model, b).backward()
        manual += model[2].weight.grad ** 2
    np.testing.assert_allclose(f["2.weight"], (manual / 4).numpy(), rtol=1e-5)
    # Gauss–Newton of a linear output: Σ_k (∂f_k/∂W_kj)² = mean x_j² for the last layer
    lin = torch.nn.Linear(4, 2, bias=False)
    xs = torch.randn(64, 4)
    # one sample per batch: (r_k x_j)² = x_j² exactly, whatever the ±1 probe
    s = output_sensitivity(lin, lambda m, b: m(b), [xs[i:i + 1] for i in range(64)], probes=1)
    np.testing.assert_allclose(s["weight"], np.tile((xs ** 2).mean(0).numpy(), (2, 1)),
                               rtol=1e-5)
    with pytest.raises(InvalidOption):
        fisher_diagonal(model, loss_fn, [])


def test_rdoq_shared_prefix_costs_match_the_per_level_cost():
    from dnnzip.coding import cabac
    from dnnzip.quant.rdoq import level_cost, pair_cost

    for g in (0, 1, 5, 16):
        n_act, c_sig, c_sign, c_gt, c_eg, n_ctx = cabac.ctx_layout(g, 0)
        st = cabac.init_contexts(n_ctx)
        rng = np.random.default_rng(g)
        st[0::cabac.CTX_SLOTS] = rng.integers(1, cabac.STATE_ONE, n_ctx)
        st[1::cabac.CTX_SLOTS] = rng.integers(1, cabac.STATE_ONE, n_ctx)
        shift = cabac.STATE_BITS + 1 - cabac.PROB_BITS  # the coding probability of each pair
        st[3::cabac.CTX_SLOTS] = np.maximum((st[0::cabac.CTX_SLOTS] + st[1::cabac.CTX_SLOTS])
                                            >> shift, 1)
        for m in (1, 2, 3, g, g + 1, g + 2, 40):
            if m < 1:
                continue
            for neg in (0, 1):
                for pc in (0, 1, 2):
                    both = pair_cost(m, neg, 0, pc, g, n_act, c_sig, c_sign, c_gt, c_eg, st,
                                     cabac.COST0, cabac.COST1)
                    single = [level_cost(v, neg, 0, 0, pc, g, n_act, c_sig, c_sign, c_gt, c_eg,
                                         st, cabac.COST0, cabac.COST1) for v in (m, m - 1)]
                    np.testing.assert_allclose(both, single, atol=1e-4)


def test_importance_file_round_trip(tmp_path):
    from dnnzip.codec import DnnzipError
    from dnnzip.nn.importance import load_importance, save_importance

    imp = {"a.weight": np.abs(gauss((3, 4))), "b": np.ones(5, np.float32)}
    save_importance(tmp_path / "f.safetensors", imp)
    back = load_importance(tmp_path / "f.safetensors")
    for k, v in imp.items():
        np.testing.assert_array_equal(back[k], v)
    with pytest.raises(InvalidOption):
        save_importance(tmp_path / "g.safetensors", {"x": -np.ones(2, np.float32)})
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(DnnzipError):
        load_importance(tmp_path / "junk.safetensors")
    with pytest.raises(DnnzipError):
        load_importance(tmp_path / "missing.npz")


def test_encode_with_stats_reports_the_yardsticks():
    w = gauss((64, 32), 10)
    codec = DeepCabacCodec(step=0.01, dq=False, lam=0.0)
    data, stats = codec.encode_with_stats(w)
    assert data == codec.encode(w)
    q = np.rint(w / 0.01).astype(np.int64)
    _, c = np.unique(q, return_counts=True)
    assert stats["entropy_bits"] == pytest.approx(float(-(c * np.log2(c / q.size)).sum()))
    assert stats["distinct"] == c.size
    assert stats["snr_db"] == pytest.approx(snr(w, q * 0.01), rel=1e-4)
    assert 8 * len(data) / w.size == pytest.approx(stats["bits_per_weight"])


def test_search_samples_long_rows_and_big_tensors():
    big = gauss((300_000,), 11)
    s = stepsize.TensorSample.take("x", big, 300_000)
    assert s.values.size <= stepsize.SAMPLE and s.row_len == stepsize.SAMPLE // 8
    np.testing.assert_array_equal(s.values, big[s.index])
    t = {"big": big, "mat": gauss((600, 256), 12)}
    m = DeepCabacMethod(target_ratio=6.0)
    total, _ = _coded(m, t)
    ratio = sum(a.nbytes for a in t.values()) / total
    assert 5.7 <= ratio <= 7.0


def _reference_trellis(w, sc, fw, i0, i1, lo, row_len, s0, p0, lam, g, ctx_mode, sigc, signc,
                       magc, egpre, levels):
    """The exhaustive add-compare-select in plain Python: every state, its quantizer's two
    nearest indices and zero, scanned state by state with strict <, same sums in the same
    order. The compiled trellis must choose exactly the same indices."""
    from dnnzip.coding.cabac import DQ_TRANS, activity, sign_class

    inf = 1e300

    def rate(k, s, a, pc):
        if k == 0:
            return sigc[s, a, pc, 0]
        neg = 1 if k < 0 else 0
        m = abs(k)
        c = sigc[s, a, pc, 1] + signc[pc, neg]
        if m <= g:
            return c + magc[s >> 1, a, neg, m]
        nb = (m - g).bit_length() - 1
        return c + magc[s >> 1, a, neg, g + 1] + egpre[nb]

    J = [inf] * 4
    pk = [0] * 4
    J[s0], pk[s0] = 0.0, p0
    back = []
    for i in range(i0, i1):
        xi = float(np.float32(w[i]) / np.float32(sc))
        f = float(fw[i]) if fw is not None else 1.0
        above = abs(int(levels[i - row_len])) if ctx_mode == 1 and i - row_len >= lo else 0
        ke = int(np.floor(xi * 0.5))
        ro = 2 * int(np.floor((xi - 1.0) * 0.5)) + 1
        ax = abs(xi)
        try_zero = ax < 1.0 or f * (2.0 * ax - 1.0) <= lam * 64.0
        nJ, step = [inf] * 4, [(0, 0)] * 4
        for s in range(4):
            if J[s] >= inf:
                continue
            pc = sign_class(pk[s])
            a = activity(abs(pk[s]), above) if ctx_mode == 1 else 0
            for c in range(3):
                if c == 2:
                    if not try_zero:
                        continue
                    k, r = 0, 0
                elif s >> 1 == 0:
                    k = ke + c
                    r = 2 * k
                    if k == 0:
                        continue
                else:
                    r = ro + 2 * c
                    k = (r + 1) >> 1 if r > 0 else -((-r + 1) >> 1)
                d = xi - r
                cost = J[s] + f * d * d + lam * rate(k, s, a, pc)
                ns = DQ_TRANS[s, k & 1]
                if cost < nJ[ns]:
                    nJ[ns], step[ns] = cost, (s, k)
        back.append(step)
        J = nJ
        pk = [step[s][1] if nJ[s] < inf else pk[s] for s in range(4)]
    s = min(range(4), key=lambda q: (J[q], q))
    out = np.zeros(i1 - i0, dtype=np.int64)
    for t in range(i1 - i0 - 1, -1, -1):
        out[t] = back[t][s][1]
        s = back[t][s][0]
    return out


@pytest.mark.parametrize("ctx_mode", [0, 1])
@pytest.mark.parametrize("use_f", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_trellis_matches_the_exhaustive_search(ctx_mode, use_f, seed):
    """The branch-free scalar trellis (two predecessors per state, parity-sorted candidates)
    picks the very indices of the plain exhaustive Viterbi, ties included."""
    from dnnzip.quant.dependent import _trellis

    rng = np.random.default_rng(seed)
    g = [16, 3, 0][seed]
    n_act = 5 if ctx_mode == 1 else 1
    row_len, n = 40, 120
    # x = w/Δ, importance, λ and rates on binary grids, so that costs are exact and ties
    # between paths really happen; a few weights far beyond g
    sc = 0.25
    w = (rng.integers(-12, 13, n) * 0.0625).astype(np.float32)
    w[rng.integers(0, n, 6)] = rng.normal(0, 8.0, 6).astype(np.float32)
    fw = rng.choice([0.5, 1.0, 2.0], n).astype(np.float32) if use_f else None
    # rate tables: coarse values (ties again), as the coder's snapshots would be
    sigc = rng.integers(1, 8, (4, n_act, 3, 2)).astype(np.float64) * 0.5
    signc = rng.integers(1, 4, (3, 2)).astype(np.float64) * 0.5
    magc = np.cumsum(rng.integers(1, 4, (2, n_act, 2, g + 2)), axis=-1).astype(np.float64)
    egpre = np.cumsum(rng.integers(1, 5, 30)).astype(np.float64)
    lam = [0.0, 0.25, 1.5][seed]
    lo = 0
    for i0 in range(0, n, row_len):
        levels = np.zeros(n, dtype=np.int32)
        levels[:i0] = rng.integers(-5, 6, i0)
        s0, p0 = int(rng.integers(0, 4)), int(rng.integers(-3, 4))
        bps = np.zeros((row_len, 4), dtype=np.int8)
        bpk = np.zeros((row_len, 4), dtype=np.int32)
        _trellis(w, np.float32(sc), fw if use_f else np.ones(1, np.float32), use_f, i0,
                 i0 + row_len, lo, row_len, s0, p0, lam, g, ctx_mode, sigc, signc, magc, egpre,
                 levels, bps, bpk)
        ref = _reference_trellis(w, sc, fw, i0, i0 + row_len, lo, row_len, s0, p0, lam, g,
                                 ctx_mode, sigc, signc, magc, egpre, levels)
        np.testing.assert_array_equal(levels[i0:i0 + row_len], ref)


def test_unary_length_follows_the_level_scale():
    from dnnzip.coding import cabac
    from dnnzip.methods.deepcabac import decode_stream

    w = gauss((64, 50), 9)  # mean |w| ≈ 0.04
    for step, want in ((0.04 / 20, cabac.FINE_G), (0.04 / 2, cabac.DEFAULT_G)):
        stream, info = encode_array(w, step, lam=0.1, dq=True)
        params, r = decode_stream(stream, w.shape)
        assert params.g == want
        np.testing.assert_array_equal(r, info.recon)
    # an explicit g is kept whatever the scale
    stream, _ = encode_array(w, 0.04 / 20, g=12)
    assert decode_stream(stream, w.shape)[0].g == 12
    assert cabac.auto_g(0.0) == cabac.DEFAULT_G
