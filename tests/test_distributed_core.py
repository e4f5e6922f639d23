"""Pure core of the communicate pillar: selection, compressors, residuals, packets, ledger."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dnnzip.codec import CorruptPayload, InvalidOption
from dnnzip.coding.golomb import expected_bits_per_position
from dnnzip.distributed import (
    SBC,
    STC,
    BitLedger,
    FederatedSimulator,
    Message,
    NonFiniteUpdate,
    PacketCodec,
    ResidualMemory,
    Slot,
    TopK,
    dense,
    make_compressor,
    num_selected,
    sbc,
    split_non_iid,
    stc,
    topk,
    topk_indices,
)

# ------------------------------------------------------------------------------ selection


@pytest.mark.parametrize("method", ["exact", "sampled", "auto"])
@pytest.mark.parametrize("n,k", [(10, 3), (1000, 1), (300_000, 300), (300_000, 3000)])
def test_topk_indices_is_exact(method, n, k):
    rng = np.random.default_rng(n + k)
    x = rng.standard_normal(n)
    got = np.sort(x[topk_indices(x, k, method=method)])
    want = np.sort(x)[n - k :]
    assert np.array_equal(got, want)


def test_sampled_selection_survives_adversarial_layout():
    # a huge block of equal values and a few large ones: the sample cannot see the tail
    x = np.zeros(400_000)
    x[::1000] = np.arange(400) + 1.0
    got = topk_indices(x, 350, method="sampled")
    assert np.array_equal(np.sort(x[got]), np.arange(51, 401, dtype=float))


def test_topk_indices_edges():
    x = np.array([3.0, 1.0, 2.0])
    assert topk_indices(x, 0).size == 0
    assert sorted(topk_indices(x, 5).tolist()) == [0, 1, 2]
    assert topk_indices(np.empty(0), 3).size == 0
    with pytest.raises(InvalidOption):
        topk_indices(x, 1, method="sort")


def test_num_selected_is_ceil():
    assert num_selected(100, 0.01) == 1
    assert num_selected(101, 0.01) == 2
    assert num_selected(1000, 0.001) == 1
    assert num_selected(0, 0.5) == 0
    assert num_selected(7, 1.0) == 7


# ------------------------------------------------------------------------------ compressors


def test_sbc_keeps_the_side_with_larger_mean():
    x = np.array([5.0, 4.0, -1.0, -1.5, 0.0, 3.0, -20.0, 0.1, 0.2, 0.3])
    m = sbc(x, 0.3)  # k = 3: positives 5,4,3 mean 4; negatives -20,-1.5,-1 mean -7.5
    assert m.positions.tolist() == [2, 3, 6]
    assert m.scale == pytest.approx(-7.5)
    assert np.all(m.position_values() == np.float32(-7.5))
    m2 = sbc(-x, 0.3)
    assert m2.scale == pytest.approx(7.5)


def test_sbc_one_sided_and_zero_inputs():
    m = sbc(np.array([0.0, 1.0, 2.0, 0.0]), 0.5)  # no negatives at all
    assert m.positions.tolist() == [1, 2] and m.scale == pytest.approx(1.5)
    z = sbc(np.zeros(10), 0.5)
    assert z.count == 0 and z.scale == 0.0
    e = sbc(np.empty(0), 0.5)
    assert e.count == 0 and e.numel == 0


def test_stc_ternary_and_topk_values():
    x = np.array([0.5, -3.0, 2.0, 0.1, -0.2, 1.0])
    m = stc(x, 0.5)  # k = 3: |-3|, 2, 1 → μ = 2
    assert m.positions.tolist() == [1, 2, 5]
    assert m.scale == pytest.approx(2.0)
    assert m.position_values().tolist() == [-2.0, 2.0, 2.0]
    t = topk(x, 0.5)
    assert t.positions.tolist() == [1, 2, 5]
    assert t.position_values().tolist() == [-3.0, 2.0, 1.0]
    d = dense(x)
    assert np.array_equal(d.to_dense().numpy(), x.astype(np.float32))


@pytest.mark.parametrize("p", [0.0, -0.1, 1.5, float("nan"), "x"])
def test_bad_density_is_rejected(p):
    with pytest.raises(InvalidOption):
        sbc(np.ones(4), p)
    with pytest.raises(InvalidOption):
        make_compressor("stc", p)


def test_unknown_method_rejected():
    with pytest.raises(InvalidOption):
        make_compressor("zip", 0.1)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_input_raises(bad):
    x = np.ones(100)
    x[17] = bad
    for f in (sbc, stc, topk):
        with pytest.raises(NonFiniteUpdate):
            f(x, 0.1)
    with pytest.raises(NonFiniteUpdate):
        dense(x)


def test_huge_finite_values_are_not_mistaken_for_nonfinite():
    x = np.full(10, 3e38, dtype=np.float32)  # the float32 sum overflows, every entry is finite
    m = sbc(x, 0.2)
    assert m.count == 2 and m.scale == pytest.approx(3e38, rel=1e-6)


def test_compressors_work_on_torch_tensors():
    x = torch.randn(3, 50, dtype=torch.float64)
    for c in (SBC(0.1), STC(0.1), TopK(0.1)):
        m = c(x)
        assert m.numel == 150 and 0 < m.count <= 15
        assert np.all(np.diff(m.positions) > 0)


# ------------------------------------------------------------------------------ residual


@settings(max_examples=40, deadline=None)
@given(
    method=st.sampled_from(["sbc", "stc", "topk", "dense"]),
    p=st.sampled_from([0.05, 0.2, 1.0]),
    steps=st.integers(1, 6),
    seed=st.integers(0, 2**31 - 1),
)
def test_residual_conserves_exactly(method, p, steps, seed):
    """Σ sent + residual = Σ updates, bit-exactly (fsum per element, float64)."""
    rng = np.random.default_rng(seed)
    n = 64
    mem = ResidualMemory()
    comp = make_compressor(method, p)
    sent = np.zeros((steps, n))
    ups = np.zeros((steps, n))
    for t in range(steps):
        u = (rng.standard_normal(n) * 10.0 ** rng.uniform(-3, 1, n)).astype(np.float32)
        ups[t] = u
        msg = mem.compress("w", torch.from_numpy(u), comp)
        sent[t] = msg.to_dense(torch.float64).numpy()
    res = mem.residual("w").numpy()
    for i in range(n):
        assert math.fsum(list(sent[:, i]) + [res[i]]) == math.fsum(ups[:, i])


def test_residual_nonfinite_leaves_state_untouched_and_size_mismatch():
    mem = ResidualMemory()
    mem.accumulate("a", torch.ones(5))
    bad = torch.ones(5)
    bad[2] = float("nan")
    with pytest.raises(NonFiniteUpdate):
        mem.accumulate("a", bad)
    assert torch.equal(mem.residual("a"), torch.ones(5, dtype=torch.float64))
    with pytest.raises(InvalidOption):
        mem.accumulate("a", torch.ones(6))
    state = mem.state_dict()
    other = ResidualMemory()
    other.load_state_dict(state)
    assert torch.equal(other.residual("a"), mem.residual("a"))


def test_residual_handles_empty_tensor():
    mem = ResidualMemory()
    msg = mem.compress("e", torch.empty(0), SBC(0.1))
    assert msg.count == 0 and mem.residual("e").numel() == 0


# ------------------------------------------------------------------------------ packets


def _messages(method, slots, rng):
    comp = make_compressor(method, 0.01)
    out = []
    for s in slots:
        x = rng.standard_normal(s.numel)
        out.append(comp(x) if s.compressed and method != "dense" else dense(x))
    return out


SLOTS = (Slot("w1", 20_000, True), Slot("b1", 7, False), Slot("w2", 3_000, True),
         Slot("empty", 0, True), Slot("b2", 300, True))


@pytest.mark.parametrize("method", ["sbc", "stc", "topk", "dense"])
def test_packets_round_trip(method):
    rng = np.random.default_rng(1)
    codec = PacketCodec(SLOTS, method, 0.01)
    msgs = _messages(method, codec.slots, rng)
    data, bits = codec.encode(msgs)
    assert 0 <= 8 * len(data) - bits < 16  # at most the padding of the sign and Golomb bytes
    for decoded in (codec.decode(data), codec.decode_padded(codec.encode_padded(msgs))):
        for a, b in zip(msgs, decoded, strict=True):
            assert a.method == b.method and a.numel == b.numel
            assert np.array_equal(a.positions, b.positions)
            assert np.array_equal(a.position_values(), b.position_values())


@pytest.mark.parametrize("method", ["sbc", "stc", "topk", "dense"])
def test_own_packet_from_messages_equals_its_decoded_bytes(method):
    """A worker merges its own packet from its messages (raw_of, or the raw that
    encode_with_raw returns with the bytes): every field must be bit for bit what a peer
    decodes from the bytes, or the replicas would drift apart."""
    rng = np.random.default_rng(3)
    codec = PacketCodec(SLOTS, method, 0.01)
    msgs = _messages(method, codec.slots, rng)
    payload, bits, with_bytes = codec.encode_with_raw(msgs)
    assert (payload, bits) == codec.encode(msgs)
    for mine in (codec.raw_of(msgs), with_bytes):
        for theirs in (codec.decode_raw(payload),
                       codec.decode_padded_raw(codec.encode_padded(msgs))):
            for field, a, b in zip(mine._fields, mine, theirs, strict=True):
                if a is None or b is None:
                    assert a is None and b is None, field
                    continue
                assert a.dtype == b.dtype and np.array_equal(a.view(np.uint8),
                                                             b.view(np.uint8)), field
        assert mine.positions.size == sum(m.positions.size for m in msgs)


def test_sbc_packet_costs_what_the_spec_says():
    """One big compressed tensor: bits ≈ k·b̄ + 32 + 32 (count), b̄ from the Golomb formula."""
    n, p = 1_000_000, 0.01
    rng = np.random.default_rng(0)
    codec = PacketCodec([Slot("w", n, True)], "sbc", p)
    msg = sbc(rng.standard_normal(n), p)
    _, bits = codec.encode([msg])
    per_position = (bits - 64) / msg.count
    assert abs(per_position - expected_bits_per_position(p)) / expected_bits_per_position(p) < 0.02
    # STC adds exactly one sign bit per position
    codec_t = PacketCodec([Slot("w", n, True)], "stc", p)
    m_t = stc(rng.standard_normal(n), p)
    _, bits_t = codec_t.encode([m_t])
    assert bits_t - 64 - m_t.count == pytest.approx(per_position * m_t.count, rel=0.03)


def test_corrupted_packets_are_detected():
    rng = np.random.default_rng(2)
    codec = PacketCodec(SLOTS, "stc", 0.01)
    msgs = _messages("stc", codec.slots, rng)
    data, _ = codec.encode(msgs)
    with pytest.raises(CorruptPayload):
        codec.decode(data[:-3])  # truncated Golomb stream
    with pytest.raises(CorruptPayload):
        codec.decode(data[:5])  # shorter than the head
    bad = bytearray(data)
    bad[0:4] = (10**6).to_bytes(4, "little")  # absurd count
    with pytest.raises(CorruptPayload):
        codec.decode(bytes(bad))
    bad = bytearray(data)
    bad[4:8] = np.array([np.nan], dtype="<f4").tobytes()  # NaN scale
    with pytest.raises(CorruptPayload):
        codec.decode(bytes(bad))
    words = codec.encode_padded(msgs)
    words[1] = 10**9  # a position beyond its tensor
    with pytest.raises(CorruptPayload):
        codec.decode_padded(words)
    with pytest.raises(CorruptPayload):
        codec.decode_padded(words[:-1])


def test_packet_check_names_the_bad_part():
    """The compiled packet check: a non-finite dense value or top-k value, and a slot
    holding more than its k positions, each rejected with what is wrong."""
    codec = PacketCodec([Slot("w", 1000, True), Slot("b", 4, False)], "topk", 0.01)
    msgs = [topk(np.random.default_rng(4).standard_normal(1000), 0.01),
            dense(np.ones(4, dtype=np.float32))]
    data, _ = codec.encode(msgs)
    codec.decode(data)  # sound
    nan = np.array([np.nan], dtype="<f4").tobytes()
    for at, what in ((4, "dense value"), (4 + 16, "non-finite value")):
        bad = bytearray(data)
        bad[at : at + 4] = nan
        with pytest.raises(CorruptPayload, match=what):
            codec.decode(bytes(bad))
    two = PacketCodec([Slot("a", 1000, True), Slot("c", 1000, True)], "sbc", 0.01)
    over = [Message("sbc", 1000, np.arange(11, dtype=np.int64), 0.5),
            Message("sbc", 1000, np.arange(3, dtype=np.int64), 0.5)]
    with pytest.raises(CorruptPayload, match="slot 'a' has 11 positions, k = 10"):
        two.decode(two.encode(over)[0])


def test_packet_rejects_messages_that_do_not_fit():
    codec = PacketCodec(SLOTS, "sbc", 0.01)
    msgs = _messages("stc", codec.slots, np.random.default_rng(3))
    with pytest.raises(InvalidOption):
        codec.encode(msgs)
    with pytest.raises(InvalidOption):
        codec.encode(msgs[:2])
    with pytest.raises(InvalidOption):  # a worker's own packet is checked the same way
        codec.raw_of(msgs)


# ------------------------------------------------------------------------------ ledger


def test_ledger_totals_and_ratios():
    led = BitLedger()
    for s in range(10):
        led.record(s, dense_bits=3200)
    led.record(9, golomb_bits=100, sent_bytes=16)
    t = led.totals()
    assert t["dense_bits"] == 32000 and t["golomb_bits"] == 100
    assert t["ratio_golomb"] == 320 and t["ratio_sent"] == 250
    assert len(led.per_step()) == 10
    clone = BitLedger()
    clone.load_state_dict(led.state_dict())
    assert clone.totals() == t
    assert "up" in led.summary()


# ------------------------------------------------------------------------------ federated


def test_split_non_iid_gives_two_classes_each_and_partitions():
    labels = np.repeat(np.arange(10), 50)
    parts = split_non_iid(labels, 100, 2, seed=0)
    assert len(parts) == 100
    allidx = np.concatenate(parts)
    assert np.array_equal(np.sort(allidx), np.arange(500))
    assert all(len(np.unique(labels[p])) == 2 for p in parts)
    with pytest.raises(InvalidOption):
        split_non_iid(labels, 10, 11)


def _toy_clients(n_clients=8, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((5, 3))
    x = rng.standard_normal((400, 5)).astype(np.float32)
    y = (x @ w).argmax(1)
    parts = split_non_iid(y, n_clients, 2, seed)
    clients = [(torch.from_numpy(x[p]), torch.from_numpy(y[p])) for p in parts]
    return clients, torch.from_numpy(x), torch.from_numpy(y)


def test_federated_simulator_learns_and_counts_bits():
    clients, x, y = _toy_clients()
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    sim = FederatedSimulator(model, clients, up="stc", p_up=0.2, down="stc", p_down=0.2,
                             clients_per_round=3, local_steps=3, batch_size=16, lr=0.2, seed=0)

    def acc(m):
        with torch.no_grad():
            return float((m(x).argmax(1) == y).float().mean())

    before = acc(model)
    hist = sim.run(60, evaluate=acc, eval_every=20)
    assert hist[-1]["metric"] > max(before, 0.6)
    up, down = sim.ledger.totals("up"), sim.ledger.totals("down")
    assert up["dense_bits"] == 60 * 3 * 32 * 18
    assert 0 < up["golomb_bits"] < up["dense_bits"] and 0 < down["golomb_bits"]
    # every client's model equals the global one the broadcasts describe
    assert all(torch.equal(p, g) for p, g in zip(model.parameters(), sim.global_params,
                                                 strict=True))


def test_federated_simulator_bad_options():
    clients, _, _ = _toy_clients()
    model = torch.nn.Linear(5, 3)
    with pytest.raises(InvalidOption):
        FederatedSimulator(model, clients, clients_per_round=0)
    with pytest.raises(InvalidOption):
        FederatedSimulator(model, [], clients_per_round=1)
    with pytest.raises(InvalidOption):
        FederatedSimulator(model, clients, p_up=2.0)


def test_message_add_to_accumulates():
    m = Message("sbc", 5, np.array([1, 3]), 2.0)
    out = torch.ones(5)
    m.add_to(out)
    assert out.tolist() == [1.0, 3.0, 1.0, 3.0, 1.0]


@pytest.mark.parametrize("method", ["sbc", "stc", "topk"])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n", [300_000, 5_000, 1_500, 7])
def test_fused_accumulate_compress_matches_the_plain_path(method, momentum, dtype, n):
    """The compiled paths (one fused pass for CPU tensors from ``FUSED_MIN_NUMEL`` on,
    accumulate + heap top-k for smaller ones) give the same message and residual as
    momentum update + add + compress done separately."""
    rng = np.random.default_rng(5)
    comp = make_compressor(method, 0.003)
    acc_f = torch.from_numpy(rng.standard_normal(n)).to(dtype)
    acc_p = acc_f.clone()
    u_f = torch.from_numpy(rng.standard_normal(n).astype(np.float32))
    u_p = u_f.clone()
    g = torch.from_numpy(rng.standard_normal(n).astype(np.float32))
    fused = comp.accumulate_compress(acc_f, g, u_f if momentum else None, momentum)
    if momentum:
        u_p.mul_(momentum).add_(g)
        acc_p.add_(u_p)
    else:
        acc_p.add_(g)
    plain = comp(acc_p)
    assert torch.equal(acc_f, acc_p) and torch.equal(u_f, u_p)
    assert np.array_equal(fused.positions, plain.positions)
    assert np.array_equal(fused.position_values(), plain.position_values())
    assert fused.count == num_selected(n, 0.003)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 20_000), seed=st.integers(0, 2**32 - 1), use_mom=st.booleans(),
       consume=st.booleans(), use_abs=st.booleans(), f32=st.booleans(),
       cap=st.sampled_from([0, 5, 1 << 20]))
def test_fused_pass_collects_exactly_the_elements_beyond_the_thresholds(
        n, seed, use_mom, consume, use_abs, f32, cap):
    """The compiled fused pass against numpy, for every combination of its switches and
    sizes that end inside a chunk and inside a 64-element block: A += d (d = g or
    u ← m·u + g), g zeroed with ``consume``, and the positions with A ≥ hi (|A| ≥ hi with
    ``use_abs``) and A ≤ lo, increasing, with their new values — at most ``cap`` written,
    the counts exact."""
    from dnnzip.distributed import core

    rng = np.random.default_rng(seed)
    dt = np.float32 if f32 else np.float64
    acc = rng.standard_normal(n).astype(dt)
    g = rng.standard_normal(n).astype(np.float32)
    u = rng.standard_normal(n).astype(np.float32) if use_mom else np.zeros(1, np.float32)
    m = np.float32(0.9)
    d = (np.float32(m * u) + g).astype(np.float32) if use_mom else g
    want_acc = acc + d
    want_u = d.copy() if use_mom else u.copy()
    hi, lo = 1.5, -1.2
    key = np.abs(want_acc) if use_abs else want_acc
    up, down = np.flatnonzero(key >= hi), np.flatnonzero(key <= lo)
    bufs = [np.full(max(cap, 1), -1, np.int64), np.zeros(max(cap, 1), dt),
            np.full(max(cap, 1), -1, np.int64), np.zeros(max(cap, 1), dt)]
    g_in = g.copy()
    nh, nl = core._accumulate_collect(acc, g_in, u, m, use_mom, consume, use_abs, hi, lo,
                                      core._mask_chunk(), cap, *bufs)
    assert np.array_equal(acc, want_acc) and np.array_equal(u, want_u)
    assert np.array_equal(g_in, np.zeros_like(g) if consume else g)
    assert (nh, nl) == (up.size, down.size)
    for (pos, val), want in (((bufs[0], bufs[1]), up), ((bufs[2], bufs[3]), down)):
        w = min(want.size, cap)
        assert np.array_equal(pos[:w], want[:w]) and np.array_equal(val[:w], want_acc[want[:w]])


@pytest.mark.parametrize("method", ["sbc", "stc", "topk"])
@pytest.mark.parametrize("n", [1_000, 300_000])
def test_consume_zeroes_the_update_and_changes_nothing_else(method, n):
    """consume=True (the hook's bucket is both input and output): same message and residual
    as without, and the update memory comes back zeroed — in the fused and the plain path."""
    rng = np.random.default_rng(n)
    comp = make_compressor(method, 0.01)
    g = torch.from_numpy(rng.standard_normal(n).astype(np.float32))
    acc_a = torch.from_numpy(rng.standard_normal(n))
    acc_b = acc_a.clone()
    keep = g.clone()
    plain = comp.accumulate_compress(acc_a, g)
    consumed = comp.accumulate_compress(acc_b, g, consume=True)
    assert torch.equal(acc_a, acc_b)
    assert keep.count_nonzero() > 0 and g.count_nonzero() == 0
    assert np.array_equal(plain.positions, consumed.positions)
    assert np.array_equal(plain.position_values(), consumed.position_values())


@pytest.mark.parametrize("method", ["sbc", "stc", "topk"])
def test_hinted_thresholds_select_exactly_what_the_plain_path_selects(method):
    """Over steps of error feedback, the fused pass takes its thresholds from the previous
    step's k-th values (a hint kept per accumulator) instead of a sample: every message is
    still the exact selection of the accumulated residual, and the hint is used (it
    rarely misses on a steady stream of updates)."""
    n, p, steps = 200_000, 0.01, 12
    rng = np.random.default_rng(21)
    comp = make_compressor(method, p)
    plain_comp = make_compressor(method, p, "exact")
    mem = ResidualMemory(torch.float32)
    twin = torch.zeros(n, dtype=torch.float32)
    hinted = 0
    for _ in range(steps):
        g = torch.from_numpy((rng.standard_normal(n) * 0.01).astype(np.float32))
        twin.add_(g)
        misses = comp.hint_misses
        had_hint = len(mem._hints.get("w", [])) == 2
        msg = mem.accumulate_compress("w", g, comp)
        hinted += had_hint and comp.hint_misses == misses
        want = plain_comp(twin)
        assert torch.equal(mem.residual("w"), twin)
        assert np.array_equal(msg.positions, want.positions)
        assert np.array_equal(msg.position_values(), want.position_values())
        mem.subtract("w", msg)
        twin.sub_(msg.to_dense(torch.float32))
    assert comp.fallbacks == 0 and hinted >= steps // 2


@pytest.mark.parametrize("method", ["sbc", "stc"])
def test_a_hint_that_misses_still_selects_exactly(method):
    """A hint from a distribution that has since moved (thresholds far too high, or far
    too low: more candidates than the capacity) is detected; the selection reruns on the
    updated residual and stays exact, and the next call samples again."""
    n, p = 100_000, 0.01
    rng = np.random.default_rng(8)
    for bad in ([50.0, -50.0], [1e-9, -1e-9] if method == "sbc" else [1e-9, -math.inf]):
        comp = make_compressor(method, p)
        acc = torch.from_numpy(rng.standard_normal(n).astype(np.float32))
        g = torch.from_numpy(rng.standard_normal(n).astype(np.float32))
        want = comp(acc + g)
        hint = list(bad)
        got = comp.accumulate_compress(acc, g, hint=hint)
        assert comp.hint_misses == 1 and hint == []
        assert np.array_equal(got.positions, want.positions)
        assert np.array_equal(got.position_values(), want.position_values())


def test_fused_selection_with_ties_takes_exactly_k_in_position_order():
    """Integer-valued accumulators: many entries equal the k-th value. The fused pass must
    still send exactly k positions, the k largest values, and among equal values the
    earliest positions (the plain sampled path does the same)."""
    n, p = 200_000, 0.01
    rng = np.random.default_rng(3)
    vals = rng.integers(-2000, 2001, n).astype(np.float64)  # ≈ 100 entries per magnitude
    comp = make_compressor("stc", p)
    k = num_selected(n, p)
    fused = comp.accumulate_compress(torch.from_numpy(vals.copy()), torch.zeros(n))
    plain = stc(vals, p)
    want = np.sort(np.abs(vals))[n - k :]
    assert comp.fallbacks == 0 and fused.count == k
    assert np.array_equal(np.sort(np.abs(vals[fused.positions])), want)
    assert np.array_equal(fused.positions, plain.positions)
    t = want[0]  # the k-th magnitude: ties broken by position
    tied = np.flatnonzero(np.abs(vals) == t)
    chosen = np.intersect1d(fused.positions, tied)
    assert 0 < chosen.size < tied.size and np.array_equal(chosen, tied[: chosen.size])


@pytest.mark.parametrize("workers", [2, 3])  # 2: the branch-free pair merge
@pytest.mark.parametrize("method", ["sbc", "stc", "topk"])
def test_flat_averaging_equals_the_generic_path(method, workers):
    """Exchanger's compiled merge into the flat bucket gives, bit for bit, what per-slot
    Message.add_to then div_ gives — with positions several workers send."""
    from dnnzip.distributed.engine import Exchanger

    rng = np.random.default_rng(7)
    slots = (Slot("w1", 50_000, True), Slot("b1", 7, False), Slot("w2", 3_000, True),
             Slot("empty", 0, True), Slot("b2", 300, True))
    codec = PacketCodec(slots, method, 0.05)
    base = rng.standard_normal(sum(s.numel for s in slots))
    raws, decoded = [], []
    for _ in range(workers):  # "workers", correlated so that many positions coincide
        x = base + 0.3 * rng.standard_normal(base.size)
        msgs, at = [], 0
        for s in slots:
            part = x[at : at + s.numel]
            at += s.numel
            c = make_compressor(method, 0.05)
            msgs.append(c(part) if s.compressed else dense(part))
        data, _ = codec.encode(msgs)
        raws.append(codec.decode_raw(data))
        decoded.append(codec.decode(data))
    ex = Exchanger(method, 0.05)
    flat = torch.zeros(base.size)
    ex._average_flat(codec, slots, raws, [flat], workers)
    # the same slots spread over two buffers (several DDP buckets in one round): a dense
    # slot ends the first, the empty slot sits at the start of the second
    first = 50_000 + 7
    parts = [torch.zeros(first), torch.zeros(base.size - first)]
    ex._average_flat(codec, slots, raws, parts, workers)
    assert torch.equal(torch.cat(parts), flat)
    generic = [torch.zeros(s.numel) for s in slots]
    for msgs in decoded:
        for o, m in zip(generic, msgs, strict=True):
            m.add_to(o)
    for o in generic:
        o.div_(workers)
    assert torch.equal(flat, torch.cat(generic))


@pytest.mark.parametrize("method", ["sbc", "stc", "topk"])
def test_fused_path_conserves_exactly(method):
    """Through the fused pass (large tensor, consume): Σ sent + residual = Σ updates,
    bit-exactly per element (fsum), and the update memory is handed back zeroed."""
    n, steps = 1 << 16, 4
    rng = np.random.default_rng(11)
    mem = ResidualMemory()
    comp = make_compressor(method, 0.01)
    sent = np.zeros((steps, n))
    ups = np.zeros((steps, n))
    for t in range(steps):
        u = (rng.standard_normal(n) * 10.0 ** rng.uniform(-3, 1, n)).astype(np.float32)
        ups[t] = u
        g = torch.from_numpy(u.copy())
        msg = mem.accumulate_compress("w", g, comp, consume=True)
        assert g.count_nonzero() == 0 and msg.count > 0
        mem.subtract("w", msg)
        sent[t] = msg.to_dense(torch.float64).numpy()
    assert comp.fallbacks == 0
    res = mem.residual("w").numpy()
    bad = [i for i in range(n)
           if math.fsum(list(sent[:, i]) + [res[i]]) != math.fsum(ups[:, i])]
    assert bad == []


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.floats(-1e30, 1e30, allow_nan=False, allow_subnormal=False).map(
                              lambda x: float(np.float32(x))),
                          st.sampled_from([0.0, -1.5, 2.0, 1e-30])),
                min_size=1, max_size=600),
       st.integers(0, 2), st.data())
def test_histogram_selection_finds_the_exact_kth_key(values, mode, data):
    """The compiled k-th-largest search (histogram rounds, then a sort) agrees with a full
    sort for every key mode, with ties, zeros and keys spanning 60 orders of magnitude,
    and counts the keys strictly above it."""
    from dnnzip.distributed.core import _kth_and_above

    v = np.array(values, dtype=np.float32)
    k = data.draw(st.integers(1, v.size))
    key = (v, -v, np.abs(v))[mode].astype(np.float64)
    scratch = np.empty(v.size)
    t, above = _kth_and_above(v, mode, k, scratch)
    assert t == np.sort(key)[v.size - k]
    assert above == int((key > t).sum())


def test_histogram_selection_on_many_candidates_and_geometric_keys():
    """Large inputs go through several histogram rounds; keys 2^-500 … 2^499 defeat the
    linear bins and end in the sort — both still exact."""
    from dnnzip.distributed.core import _kth_and_above

    rng = np.random.default_rng(3)
    for v in (rng.standard_normal(20_000).astype(np.float32) ** 3,
              2.0 ** np.arange(-500, 500.0), np.repeat([1.0, 2.0, 3.0], 5000)):
        for k in (1, 7, v.size // 3, v.size):
            t, above = _kth_and_above(v, 0, k, np.empty(v.size))
            assert t == np.sort(v)[v.size - k] and above == int((v > t).sum())


@pytest.mark.parametrize("consume", [False, True])
def test_a_skipped_round_keeps_the_whole_update_in_the_residual(monkeypatch, consume):
    """nonfinite="skip": when a peer's update holds NaN/Inf the round is skipped on every
    worker, and this worker's residual holds exactly old residual + its update (nothing
    was sent, so nothing is taken out — nor added twice); the next round sends it."""
    import dnnzip.distributed.engine as engine

    def peer_sends_nan(payload, status, group, device, timings):
        return [status, engine.STATUS_NONFINITE], [payload, b""], len(payload)

    monkeypatch.setattr(engine, "exchange_bytes", peer_sends_nan)
    ex = engine.Exchanger("sbc", 0.01, nonfinite="skip")
    ex._world = 2  # a two-worker round without a process group
    rng = np.random.default_rng(4)
    g = torch.from_numpy(rng.standard_normal(100_000).astype(np.float32))
    update = g.clone()
    means, messages = ex.run(0, ["w"], [update], [True],
                             **({"out": [update], "flat_out": update} if consume else {}))
    assert means is None and messages == []
    assert torch.equal(ex.residual.residual("w"), g.double())
