"""Matrix formats: lossless conversion, products against dense, accounting, bad input."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dnnzip.codec import InvalidOption, Quantized
from dnnzip.formats import (
    CER,
    CSER,
    CSR,
    EIE,
    FORMATS,
    Dense,
    IndexOverflow,
    MatrixFormat,
    ShapeMismatch,
    energy,
    from_dense,
    from_quantized,
    index_dtype,
    kernels,
)
from dnnzip.formats import _base as base
from dnnzip.formats import cser as cser_mod
from dnnzip.formats._base import Triplets
from dnnzip.formats.cost import TimeModel, mem_energy, op_energy, stream_bytes
from dnnzip.nn.convert import choose_format

ALL = (Dense, CSR, CER, CSER, EIE)


def _tolerance(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Float32 summation bound: a few ulps of the magnitudes summed per output.

    With an implicit ω0 ≠ 0 the formats compute Σ(ω − ω0)·x + ω0·Σx, so those terms count too.
    """
    w64, ax = w.astype(np.float64), np.abs(x).astype(np.float64)
    scale = np.abs(w64) @ ax
    if w.size:
        values, counts = np.unique(w64, return_counts=True)
        w0 = values[np.argmax(counts)]
        scale = scale + np.abs(w64 - w0) @ ax + abs(w0) * ax.sum(axis=0)
    return 1e-5 * scale + 1e-30


def _check_product(mat: MatrixFormat, w: np.ndarray, x: np.ndarray, **kw) -> None:
    y = mat.dot(x, **kw)
    ref = w.astype(np.float64) @ x.astype(np.float64)
    assert y.shape == ref.shape
    assert np.all(np.abs(y - ref) <= _tolerance(w, x)), (type(mat).__name__, y, ref)


@st.composite
def low_entropy(draw, max_rows=12, max_cols=40, max_values=20):
    m = draw(st.integers(0, max_rows))
    n = draw(st.integers(0, max_cols))
    k = draw(st.integers(1, max_values))
    values = draw(st.lists(st.floats(-4, 4, allow_nan=False, width=32), min_size=k, max_size=k,
                           unique=True))
    if draw(st.booleans()):
        values[0] = 0.0  # usually 0 is a value, and then mostly the frequent one
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    p0 = draw(st.sampled_from([0.0, 0.5, 0.9, 1.0]))
    idx = rng.integers(0, k, size=(m, n))
    idx[rng.random((m, n)) < p0] = 0
    codebook = np.asarray(values, np.float32)
    return idx, codebook, rng


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(low_entropy())
def test_every_format_equals_dense(case):
    idx, codebook, rng = case
    w = codebook[idx]
    m, n = w.shape
    x = rng.standard_normal(n).astype(np.float32)
    xb = rng.standard_normal((n, int(rng.integers(1, 20)))).astype(np.float32)
    for cls in ALL:
        k = np.unique(w).shape[0]
        if cls is EIE and k > 16:
            with pytest.raises(InvalidOption):
                cls.from_dense(w)
            continue
        for mat in (cls.from_dense(w), cls.from_quantized(Quantized(idx, codebook))):
            assert np.array_equal(mat.toarray(), w)
            assert mat.toarray().dtype == np.float32
            _check_product(mat, w, x)
            _check_product(mat, w, xb)
            _check_product(mat, w, xb[:, :1])
            assert mat.total_bits >= 0 and mat.nbytes >= 0
            assert 0.0 <= mat.entropy <= math.log2(max(k, 1)) + 1e-9
        for other in FORMATS:
            if other == "eie" and k > 16:
                continue
            assert np.array_equal(mat.to(other).toarray(), w)


@settings(max_examples=25, deadline=None)
@given(low_entropy(max_rows=30, max_cols=300))
def test_kernel_generations_agree(case):
    idx, codebook, rng = case
    w = codebook[idx]
    if w.size == 0:
        return
    x = rng.standard_normal(w.shape[1]).astype(np.float32)
    ref = w.astype(np.float64) @ x
    tol = _tolerance(w, x)
    cser, cer, csr = CSER.from_dense(w), CER.from_dense(w), CSR.from_dense(w)
    for y in (cser.matvec_naive(x), cser.matvec_grouped(x), cer.matvec_naive(x),
              csr.matvec_naive(x), cser.dot(x), cer.dot(x), csr.dot(x)):
        assert np.all(np.abs(y - ref) <= tol)


def test_float64_matrices_stay_exact_and_precise():
    rng = np.random.default_rng(1)
    codebook = rng.standard_normal(9)  # float64 values
    idx = rng.integers(0, 9, size=(50, 70))
    idx[rng.random(idx.shape) < 0.7] = 0
    w = codebook[idx]
    x = rng.standard_normal((70, 5))
    for cls in (CSR, CER, CSER):
        mat = cls.from_dense(w)
        assert mat.dtype == np.float64 and np.array_equal(mat.toarray(), w)
        np.testing.assert_allclose(mat @ x, w @ x, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(mat @ x[:, 0], w @ x[:, 0], rtol=1e-12, atol=1e-12)
    # a float32 matrix times a float64 vector computes in float64
    w32 = w.astype(np.float32)
    y = CSER.from_dense(w32) @ x[:, 0]
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, w32.astype(np.float64) @ x[:, 0], rtol=1e-12, atol=1e-12)


def _check_split(mat: MatrixFormat, w: np.ndarray, x: np.ndarray) -> None:
    """``dot`` on two threads, and for a batch the parallel kernels themselves (``dot`` may
    have measured one thread faster and run that)."""
    _check_product(mat, w, x, threads=2)
    if x.ndim == 2:
        y = mat._threaded_product(x, True, 2)
        assert np.all(np.abs(y - w.astype(np.float64) @ x.astype(np.float64))
                      <= _tolerance(w, x)), type(mat).__name__


@pytest.mark.parametrize("batch", [1, 3, 8, 9, 16, 40, 64, 100])
def test_parallel_serial_and_both_batch_kernels_agree(monkeypatch, batch):
    monkeypatch.setattr(base, "PARALLEL_MIN_WORK", 1)
    rng = np.random.default_rng(2)
    idx = rng.integers(-7, 8, size=(301, 517)) * (rng.random((301, 517)) < 0.1)
    x = rng.standard_normal((517, batch) if batch > 1 else 517).astype(np.float32)
    for shift in (0.0, 0.06):  # ω0 = 0 and ω0 ≠ 0
        w = (idx * 0.03 + shift).astype(np.float32)
        for cls in (CSR, CER, CSER):
            mat = cls.from_dense(w)
            for mode in ("sliced", "rows", "panel", "auto") if cls is not CSR else ("-",):
                mat.batch_kernel = mode
                _check_product(mat, w, x, threads=1)
                _check_split(mat, w, x)
            if cls is not CSR:  # the row kernel's other pass width than this CPU's
                monkeypatch.setattr(cser_mod, "WIDE_PASSES", not cser_mod.WIDE_PASSES)
                mat.batch_kernel = "rows"
                _check_product(mat, w, x, threads=1)
                _check_split(mat, w, x)
                monkeypatch.undo()
                monkeypatch.setattr(base, "PARALLEL_MIN_WORK", 1)


def test_nonzero_omega0_is_implicit():
    rng = np.random.default_rng(3)
    w = np.full((20, 30), 0.25, np.float32)
    w[rng.random(w.shape) < 0.2] = -1.0
    w[rng.random(w.shape) < 0.05] = 0.0
    x = rng.standard_normal((30, 4)).astype(np.float32)
    for cls in (CER, CSER, EIE):
        mat = cls.from_dense(w)
        assert mat.nnz == int(np.count_nonzero(w != 0.25))  # ω0 = 0.25 is not stored
        _check_product(mat, w, x)
        _check_product(mat, w, x[:, 0])
    csr = CSR.from_dense(w)
    assert csr.nnz == int(np.count_nonzero(w))  # CSR lists every non-zero
    _check_product(csr, w, x)


def test_single_value_empty_rows_and_empty_shapes():
    x = np.arange(6, dtype=np.float32)
    w = np.full((4, 6), 0.5, np.float32)
    for cls in ALL:
        mat = cls.from_dense(w)
        np.testing.assert_allclose(mat @ x, np.full(4, 0.5 * x.sum()), rtol=1e-6)
        assert mat.entropy == 0.0
    w = np.zeros((5, 6), np.float32)
    w[2, 3] = 1.5  # four rows without non-zeros
    for cls in ALL:
        mat = cls.from_dense(w)
        np.testing.assert_array_equal(mat @ x, w @ x)
    for shape in [(0, 6), (4, 0), (0, 0)]:
        w = np.zeros(shape, np.float32)
        for cls in ALL:
            mat = cls.from_dense(w)
            assert mat.toarray().shape == shape
            y = mat @ np.ones(shape[1], np.float32)
            assert y.shape == (shape[0],) and not y.any()
            assert (mat @ np.ones((shape[1], 3), np.float32)).shape == (shape[0], 3)


def test_index_widths_are_the_smallest_that_fit():
    assert index_dtype(255) == np.uint8 and index_dtype(256) == np.uint16
    assert index_dtype(65535) == np.uint16 and index_dtype(65536) == np.uint32
    with pytest.raises(IndexOverflow):
        index_dtype(2**32)
    w = np.zeros((3, 300), np.float32)
    w[0, 299] = 1.0
    cser = CSER.from_dense(w)
    assert cser.colI.dtype == np.uint16 and cser.rowPtr.dtype == np.uint8
    assert CSER.from_dense(w[:, :256]).colI.dtype == np.uint8
    assert CSR.from_dense(w).indices.dtype == np.uint16


def test_bad_input_gives_clear_errors():
    w = np.eye(4, dtype=np.float32)
    mat = CSER.from_dense(w)
    with pytest.raises(ShapeMismatch, match="shape mismatch"):
        mat @ np.ones(5, np.float32)
    with pytest.raises(ShapeMismatch):
        mat @ np.ones((4, 2, 2), np.float32)
    with pytest.raises(InvalidOption, match="dtype"):
        mat @ np.ones(4, np.complex64)
    with pytest.raises(InvalidOption, match="threads"):
        mat.dot(np.ones(4, np.float32), threads=0)
    assert issubclass(ShapeMismatch, ValueError)
    bad = w.copy()
    bad[1, 1] = np.nan
    for cls in ALL:
        with pytest.raises(InvalidOption, match="non-finite"):
            cls.from_dense(bad)
        with pytest.raises(InvalidOption, match="floating point"):
            cls.from_dense(np.eye(3, dtype=np.int64))
        with pytest.raises(ShapeMismatch):
            cls.from_dense(np.ones(3, np.float32))
    with pytest.raises(InvalidOption, match="outside codebook"):
        CSER.from_quantized((np.array([[0, 3]]), np.array([0.0, 1.0], np.float32)))
    with pytest.raises(InvalidOption, match="integers"):
        CSER.from_quantized((np.array([[0.0, 1.0]]), np.array([0.0, 1.0], np.float32)))
    with pytest.raises(InvalidOption, match="non-finite"):
        CSER.from_quantized((np.array([[0, 1]]), np.array([0.0, np.inf], np.float32)))
    with pytest.raises(InvalidOption, match="EIE"):
        EIE.from_dense(np.arange(20, dtype=np.float32).reshape(4, 5))
    many = np.arange(30000, dtype=np.float32).reshape(300, 100)
    with pytest.raises(InvalidOption, match="CER would need"):
        CER.from_dense(many)
    np.testing.assert_array_equal(CSER.from_dense(many).toarray(), many)
    # hand-built arrays are validated
    with pytest.raises(InvalidOption, match="colI"):
        CSER([0.0, 1.0], [7], [1], [0, 1], [0, 1, 1], (2, 4))
    with pytest.raises(InvalidOption, match="OmegaI"):
        CSER([0.0, 1.0], [1], [0], [0, 1], [0, 1, 1], (2, 4))
    with pytest.raises(InvalidOption, match="rowPtr"):
        CSER([0.0, 1.0], [1], [1], [0, 1], [0, 2, 1], (2, 4))
    with pytest.raises(InvalidOption, match="strictly increasing"):
        CSR([1.0, 2.0], [2, 2], [0, 2, 2], (2, 4))
    with pytest.raises(ShapeMismatch):
        CSR([1.0], [0], [0, 1], (2, 4))
    with pytest.raises(InvalidOption, match="unknown format"):
        mat.to("coo")
    with pytest.raises(InvalidOption, match="not a saved matrix"):
        MatrixFormat.from_state({"format": "cser"})


def test_hand_built_cser_matches_its_meaning():
    # row 0: 2.0 at cols 1,3 ; row 1: nothing ; row 2: -1.0 at col 0, 2.0 at col 2
    mat = CSER([0.0, 2.0, -1.0], [1, 3, 2, 0], [1, 1, 2], [0, 2, 3, 4], [0, 1, 1, 3], (3, 4))
    expect = np.array([[0, 2, 0, 2], [0, 0, 0, 0], [-1, 0, 2, 0]], np.float32)
    np.testing.assert_array_equal(mat.toarray(), expect)
    x = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    np.testing.assert_allclose(mat @ x, expect @ x)
    cer = mat.tocer()
    # CER lists groups in global frequency order: 2.0 (3×) before -1.0 (1×)
    np.testing.assert_array_equal(cer.omega, [0.0, 2.0, -1.0])
    np.testing.assert_array_equal(cer.rowPtr, [0, 1, 1, 3])
    np.testing.assert_array_equal(cer.OmegaPtr, [0, 2, 3, 4])


def test_cer_inserts_empty_groups():
    # values by frequency: 0 (ω0), 1.0 (4×), 2.0 (2×); row 1 has only 2.0 → empty 1.0 group
    w = np.array([[1, 1, 0, 2], [0, 0, 2, 0], [1, 1, 0, 0]], np.float32)
    cer = CER.from_dense(w)
    np.testing.assert_array_equal(cer.omega, [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(cer.rowPtr, [0, 2, 4, 5])
    np.testing.assert_array_equal(cer.OmegaPtr, [0, 2, 3, 3, 4, 6])
    np.testing.assert_array_equal(cer.colI, [0, 1, 3, 2, 0, 1])
    cser = CSER.from_dense(w)
    assert cser.num_groups == 4 and cer.num_groups == 5


def test_storage_follows_the_spec_formulas():
    rng = np.random.default_rng(4)
    m, n = 64, 300
    idx = rng.integers(-7, 8, size=(m, n)) * (rng.random((m, n)) < 0.1)
    w = (idx * 0.1).astype(np.float32)
    nnz = int(np.count_nonzero(w))
    k = np.unique(w).shape[0]
    groups = sum(np.unique(r[r != 0]).shape[0] for r in w)
    csr = CSR.from_dense(w)
    assert csr.total_bits == nnz * (32 + 16) + (m + 1) * 16
    cser = CSER.from_dense(w)
    b_ptr = index_dtype(nnz).itemsize * 8  # OmegaPtr holds 0..nnz
    b_row = index_dtype(groups).itemsize * 8  # rowPtr holds 0..groups
    assert cser.num_groups == groups
    assert cser.total_bits == (nnz * 16 + groups * (b_ptr + math.ceil(math.log2(k))) + b_ptr
                               + (m + 1) * b_row + k * 32)
    assert Dense(w).total_bits == m * n * 32
    # EIE: one byte per entry + a padding entry per 16 skipped positions
    col = np.zeros((40, 1), np.float32)
    col[[0, 20, 39], 0] = [1.0, 2.0, 1.0]
    eie = EIE.from_dense(col)
    # gaps 0, 19, 18 → entries 1, 1 + 1 padding, 1 + 1 padding
    assert eie.num_entries == 5 and eie.nnz == 3
    assert eie.storage_bits()["entries"] == 40
    np.testing.assert_array_equal(eie.toarray(), col)


def test_costs_and_energy():
    rng = np.random.default_rng(5)
    idx = rng.integers(-7, 8, size=(384, 1536)) * (rng.random((384, 1536)) < 0.1)
    w = (idx * 0.01).astype(np.float32)
    dense, csr, cser = Dense(w), CSR.from_dense(w), CSER.from_dense(w)
    c = cser.costs(batch=8)
    assert c.adds == (cser.nnz + cser.num_groups) * 8 and c.mults == cser.num_groups * 8
    assert csr.costs().mults == csr.nnz and dense.costs().mults == w.size
    for preset in ("spec", "45nm"):
        e = {name: mat.energy(1, preset)["total_pJ"] for name, mat in
             (("dense", dense), ("csr", csr), ("cser", cser))}
        assert e["cser"] < e["csr"] < e["dense"]
    # the 2.4 MB dense matrix is read from DRAM: 1000 pJ per 32-bit read (spec preset)
    assert mem_energy(w.nbytes, 32) == 1000.0 and mem_energy(4096, 8) == 1.25
    assert mem_energy(100_000, 16, "45nm") == 320.0 and op_energy("mult", 32) == 3.7
    ed = energy(dense.costs(), "spec")
    assert ed["ops_pJ"] == pytest.approx(w.size * (0.9 + 3.7))
    with pytest.raises(InvalidOption, match="preset"):
        energy(dense.costs(), "7nm")


def test_time_model_prefers_dense_when_not_sparse():
    model = TimeModel({"dense": (1e10, 3e10, 6e10), "csr": (4e9, 1e10, 1e10),
                       "cser": (4.5e9, 1.2e10, 1.3e10)})
    assert model.predict("cser", (100, 100), 1000, 1) < model.predict("dense", (100, 100), 0, 1)
    assert model.predict("cser", (100, 100), 9000, 64) > model.predict("dense", (100, 100), 0, 64)
    assert model.rate("cer", 8) == pytest.approx(1.2e10)


def test_state_round_trip_and_module_helpers():
    rng = np.random.default_rng(6)
    w = (rng.integers(-3, 4, size=(30, 50)) * (rng.random((30, 50)) < 0.2)).astype(np.float32)
    for name in FORMATS:
        mat = from_dense(w, name)
        back = MatrixFormat.from_state(mat.to_state())
        assert type(back) is type(mat)
        np.testing.assert_array_equal(back.toarray(), w)
    q = Quantized(rng.integers(0, 4, size=(5, 7)).astype(np.uint8),
                  np.array([0.0, 1.0, -1.0, 1.0], np.float32))  # duplicate codebook entry
    mat = from_quantized(q, "cer")
    np.testing.assert_array_equal(mat.toarray(), q.dequantize())
    lv = CSER.from_levels(np.array([[0, 3], [-2, 0]], np.int8), 0.5)
    np.testing.assert_array_equal(lv.toarray(), [[0, 1.5], [-1.0, 0]])



def test_batch_operands_are_cache_line_aligned():
    # a misaligned X made every 16-float row load of the batch kernels straddle two lines
    rng = np.random.default_rng(11)
    for n, b, m, dtype in ((1, 1, 1, np.float32), (7, 9, 3, np.float32),
                           (300, 64, 100, np.float32), (33, 5, 8, np.float64)):
        x = rng.standard_normal((n, b)).astype(dtype)
        for width in (8, 16):
            for zero, src in ((True, x), (False, np.asfortranarray(x))):
                xe, y = base.batch_operands(src, width, m, zero)
                bp = -(-b // width) * width
                assert xe.shape == (n + 1, bp) and y.shape == (m, bp)
                assert xe.dtype == y.dtype == dtype
                for a in (xe, y):
                    assert a.ctypes.data % 64 == 0 and a.flags.c_contiguous
                np.testing.assert_array_equal(xe[:n, :b], x)
                assert not xe[n].any() and not xe[:, b:].any()
                assert not zero or not y.any()


def test_sliced_plan_covers_every_element_once():
    rng = np.random.default_rng(7)
    w = (rng.integers(-5, 6, size=(200, 90)) * (rng.random((200, 90)) < 0.3)).astype(np.float32)
    mat = CSER.from_dense(w)
    plan = mat.plan
    real = plan.col[plan.col < w.shape[1]]
    assert real.shape[0] == mat.nnz and plan.padded >= mat.nnz
    assert plan.padded % 16 == 0
    x = np.ones(90, np.float32)
    for kernel in (kernels.sliced_matvec, kernels.sliced_matvec_gather):  # scalar / vector loads
        y = np.full(200, np.nan, np.float32)
        kernel(plan.col, plan.sl_ptr, plan.sl_len, plan.lane_weights(np.float32),
               plan.lane_row, plan.blk_ptr, x, np.empty(91, np.float32), y, 0.0)
        np.testing.assert_allclose(y, w.sum(axis=1), rtol=1e-5, atol=1e-4)


def test_lean_matvec_path_matches_the_general_one():
    rng = np.random.default_rng(8)
    w = (rng.integers(-7, 8, size=(70, 300)) * (rng.random((70, 300)) < 0.1)).astype(np.float32)
    x = rng.standard_normal(300).astype(np.float32)
    ref = w.astype(np.float64) @ x
    for cls in (CSR, CER, CSER, Dense):
        mat = cls.from_dense(w)
        assert mat._lean is None
        first = mat.dot(x)  # general path, builds the lean one
        assert mat._lean is not None
        lean = mat.dot(x, threads=1)
        np.testing.assert_array_equal(lean, first)
        assert np.all(np.abs(lean - ref) <= _tolerance(w, x))
        out = np.full(70, np.nan, np.float32)
        assert mat.dot(x, out=out) is out and np.array_equal(out, first)
        out2 = np.full((70, 3), np.nan, np.float32)
        xb = np.stack([x, 2 * x, -x], axis=1)
        assert mat.dot(xb, out=out2) is out2
        np.testing.assert_allclose(out2[:, 1], 2 * first, rtol=1e-5, atol=1e-5)
        # inputs the lean path does not take still give the same product
        ro = x.copy()
        ro.flags.writeable = False
        np.testing.assert_array_equal(mat.dot(ro), first)
        strided = np.repeat(x, 2)[::2]
        np.testing.assert_array_equal(mat.dot(strided), first)
        np.testing.assert_allclose(mat.dot(x.astype(np.float64)), ref, rtol=1e-5, atol=1e-5)
        assert mat.dot(x.astype(np.float64)).dtype == np.float64
        np.testing.assert_allclose(mat.dot(list(x)), first, rtol=1e-6, atol=1e-6)
        with pytest.raises(ShapeMismatch, match="out"):
            mat.dot(x, out=np.empty(69, np.float32))
        with pytest.raises(ShapeMismatch, match="out"):
            mat.dot(x, out=np.empty(70, np.float64))
        with pytest.raises(InvalidOption, match="C-contiguous"):
            mat.dot(x, out=np.empty(140, np.float32)[::2])
        with pytest.raises(ShapeMismatch):
            mat.dot(np.ones(299, np.float32))
        with pytest.raises(InvalidOption, match="threads"):
            mat.dot(x, threads=0)
        # the compiled entry point is not pickled; the copy rebuilds its own
        back = pickle.loads(pickle.dumps(mat))
        assert back._lean is None
        np.testing.assert_array_equal(back.dot(x), first)
        np.testing.assert_array_equal(back.dot(x), first)


def test_threads_is_an_upper_bound_small_products_stay_serial(monkeypatch):
    w = np.eye(40, dtype=np.float32)
    mat = CSER.from_dense(w)
    seen = []
    real = mat._product

    def spy(x, threads):
        seen.append(threads > 1)
        return real(x, threads)

    monkeypatch.setattr(mat, "_product", spy)
    x = np.ones((40, 4), np.float32)
    mat.dot(x, threads=2)
    assert seen == [False]  # 40·4 elements of work: below BATCH_SPLIT_MIN_WORK
    v = np.ones(40, np.float32)
    mat.dot(v, threads=2)
    assert seen == [False, False]  # 40: below PARALLEL_MIN_WORK
    monkeypatch.setattr(base, "PARALLEL_MIN_WORK", 1)
    seen.clear()
    mat.dot(v, threads=2)
    assert seen == [True]  # mat-vecs above the floor always split
    mat.dot(x, threads=2)
    assert seen == [True, False]  # the batch floor is its own
    monkeypatch.setattr(base, "BATCH_SPLIT_MIN_WORK", 1)
    seen.clear()
    mat.dot(x, threads=2)
    assert set(seen) == {False, True}  # above it both ways are timed
    seen.clear()
    mat.dot(x, threads=1)
    assert seen == [False]


def test_stream_bytes_are_the_built_formats_bytes():
    """``stream_bytes`` (what ``choose_format`` feeds the bandwidth floor) counts exactly the
    arrays CSR and CSER hold, for shapes that need 8-, 16- and 32-bit indices."""
    rng = np.random.default_rng(3)
    for shape, levels, density in (((7, 9), 3, 0.5), ((300, 260), 9, 0.1),
                                   ((40, 70_000), 5, 0.03), ((2, 3), 1, 0.0)):
        w = rng.integers(-levels, levels + 1, shape).astype(np.float32)
        w *= rng.random(shape) < density
        t = Triplets.from_dense(w)
        cser = CSER.from_triplets(t)
        assert t.num_groups == cser.num_groups
        assert stream_bytes("csr", shape, t.nnz) == CSR.from_triplets(t).nbytes
        assert stream_bytes("cser", shape, t.nnz, t.num_groups, t.omega.shape[0]) == cser.nbytes
        assert stream_bytes("dense", shape, 0) == w.nbytes
    with pytest.raises(InvalidOption, match="not 'cer'"):
        stream_bytes("cer", (3, 4), 2, 2, 3)


def test_l2_size_falls_back_when_sysfs_has_none(monkeypatch):
    import glob

    from dnnzip.formats import cost

    assert cost.l2_cache_bytes() > 0
    monkeypatch.setattr(glob, "glob", lambda pattern: [])
    assert cost.l2_cache_bytes(default=12345) == 12345


def test_time_model_bandwidth_floor_counts_only_what_l2_cannot_hold():
    rates = {"dense": (1e10, 3e10, 6e10), "csr": (4e9, 1e10, 1e10), "cser": (5e9, 1.2e10, 1.3e10)}
    model = TimeModel(rates, bandwidth=1e9, cache_bytes=1 << 20)
    work = 1000 / 4e9  # 1000 stored elements at batch 1
    assert model.predict("csr", (100, 100), 1000, 1) == pytest.approx(work)
    assert model.predict("csr", (100, 100), 1000, 1, nbytes=1 << 20) == pytest.approx(work)
    # 3 MB of arrays: 2 MB beyond L2 streamed at 1 GB/s outweighs the work
    assert model.predict("csr", (100, 100), 1000, 1, nbytes=3 << 20) == pytest.approx(
        (2 << 20) / 1e9)
    # without a calibrated bandwidth there is no floor
    assert TimeModel(rates).predict("csr", (100, 100), 1000, 1, nbytes=3 << 20) == (
        pytest.approx(work))
    cal = TimeModel.calibrate(shapes=((32, 48), (96, 96)), repeats=3)
    assert cal.bandwidth is not None and cal.bandwidth > 1e8 and cal.cache_bytes > 0


def test_auto_keeps_csr_off_a_large_matrix_cser_streams_in_fewer_bytes():
    """Work alone ranks CSR first (its rate is higher); beyond L2 the bytes decide, and
    CSER's arrays are a fraction of CSR's."""
    rates = {"dense": (1e10, 3e10, 6e10), "csr": (6e9, 1e10, 1e10), "cser": (5e9, 1.2e10, 1.3e10)}
    rng = np.random.default_rng(4)
    w = rng.integers(-7, 8, (4000, 1000)).astype(np.float32) * (rng.random((4000, 1000)) < 0.1)
    t = Triplets.from_dense(w)
    assert choose_format(t, 1, TimeModel(rates))[0] == "csr"
    assert choose_format(t, 1, TimeModel(rates, bandwidth=2e9, cache_bytes=1 << 20))[0] == "cser"


def test_time_model_counts_the_fixed_cost_of_a_call():
    rates = {"dense": (1e10, 3e10, 6e10), "csr": (4e9, 1e10, 1e10), "cser": (5e9, 1.2e10, 1.3e10)}
    plain = TimeModel(rates)
    with_fixed = TimeModel(rates, overhead={"dense": (1e-6, 2e-6, 3e-6),
                                            "csr": (2e-6, 4e-6, 5e-6),
                                            "cser": (2e-6, 4e-6, 5e-6)})
    # a 20 × 30 layer with 60 stored elements: sparse wins on work alone (0.012 vs 0.06 µs),
    # dense once the fixed costs count (2.012 vs 1.06 µs)
    args = ((20, 30), 60)
    assert plain.predict("cser", *args, 1) < plain.predict("dense", (20, 30), 0, 1)
    assert with_fixed.fixed("cer", 8) == pytest.approx(4e-6)
    assert with_fixed.predict("cser", *args, 8) == pytest.approx(4e-6 + 480 / 1.2e10)
    assert with_fixed.predict("cser", *args, 1) > with_fixed.predict("dense", (20, 30), 0, 1)
    assert plain.fixed("dense", 1) == 0.0
    cal = TimeModel.calibrate(shapes=((32, 48), (96, 96)), repeats=3)
    assert set(cal.overhead) == {"dense", "csr", "cser"}
    assert all(t > 0 for v in cal.overhead.values() for t in v)
    # rates are per calibrated size (m·n) and batch
    assert all(set(v) == {32 * 48, 96 * 96} for v in cal.rates.values())
    assert all(r > 0 for v in cal.rates.values() for table in v.values() for r in table)


def test_auto_batch_kernel_times_each_kernel_once_per_bucket(monkeypatch):

    rng = np.random.default_rng(9)
    w = (rng.integers(-7, 8, size=(60, 90)) * (rng.random((60, 90)) < 0.2)).astype(np.float32)
    mat = CSER.from_dense(w)
    runs = []
    real = cser_mod._Grouped._batch_product

    def spy(self, mode, x, threads):
        runs.append(mode)
        return real(self, mode, x, threads)

    monkeypatch.setattr(cser_mod._Grouped, "_batch_product", spy)
    # a clock under which "rows" is the fastest: every timed call of it takes 1 s less
    clock = {"t": 0.0}

    def fake_clock():
        clock["t"] += 1.0 if runs and runs[-1] == "rows" else 2.0
        return clock["t"]

    monkeypatch.setattr(cser_mod.time, "perf_counter", fake_clock)
    x = rng.standard_normal((90, 5)).astype(np.float32)
    y = mat.dot(x, threads=1)
    np.testing.assert_allclose(y, w @ x, rtol=1e-5, atol=1e-4)
    assert sorted(set(runs)) == sorted(cser_mod.BATCH_KERNELS)
    # one untimed run each, then the timed ones
    assert len(runs) == (1 + cser_mod.TUNE_RUNS) * len(cser_mod.BATCH_KERNELS)
    runs.clear()
    np.testing.assert_allclose(mat.dot(x[:, :6], threads=1), w @ x[:, :6], rtol=1e-5, atol=1e-4)
    assert runs == ["rows"]  # 5 and 6 columns share a bucket: tuned once, kept
    runs.clear()
    mat.dot(rng.standard_normal((90, 9)).astype(np.float32), threads=1)
    # a new bucket is tuned again
    assert len(runs) == (1 + cser_mod.TUNE_RUNS) * len(cser_mod.BATCH_KERNELS)
    assert cser_mod.batch_bucket(1) == 0 and cser_mod.batch_bucket(63) == 5
    assert "_tuned" not in mat.__getstate__()  # timings belong to the machine that made them
    mat.batch_kernel = "gather"
    with pytest.raises(InvalidOption, match="unknown batch kernel 'gather'"):
        mat.dot(x, threads=1)


@pytest.mark.parametrize("fmt", [CSR, CSER])
@pytest.mark.parametrize("winner", [False, True])
def test_batch_split_is_measured_per_matrix(monkeypatch, fmt, winner):
    # whether a batch product runs on several threads is timed once per (bucket, threads):
    # under a clock where the `winner` side is 1 s faster, that side is kept
    rng = np.random.default_rng(3)
    w = (rng.integers(-7, 8, size=(60, 90)) * (rng.random((60, 90)) < 0.2)).astype(np.float32)
    mat = fmt.from_dense(w)
    if fmt is CSER:
        mat.batch_kernel = "sliced"  # no kernel tuning inside: only the split is timed
    runs = []
    real = fmt._product

    def spy(self, x, threads):
        runs.append(threads > 1)
        return real(self, x, threads)

    monkeypatch.setattr(fmt, "_product", spy)
    monkeypatch.setattr(base, "BATCH_SPLIT_MIN_WORK", 1)
    clock = {"t": 0.0}

    def fake_clock():
        clock["t"] += 1.0 if runs and runs[-1] == winner else 2.0
        return clock["t"]

    monkeypatch.setattr(base.time, "perf_counter", fake_clock)
    x = rng.standard_normal((90, 5)).astype(np.float32)
    np.testing.assert_allclose(mat.dot(x, threads=2), w @ x, rtol=1e-5, atol=1e-4)
    # blocks of SPLIT_TUNE_BLOCK runs (the first untimed), sides alternating block by block
    blocks = [side for r in range(base.SPLIT_TUNE_ROUNDS)
              for side in ((False, True) if r % 2 == 0 else (True, False))]
    assert runs == [side for side in blocks for _ in range(base.SPLIT_TUNE_BLOCK)]
    runs.clear()
    np.testing.assert_allclose(mat.dot(x[:, :6], threads=2), w @ x[:, :6], rtol=1e-5, atol=1e-4)
    assert runs == [winner]  # same bucket: decided, not timed again
    runs.clear()
    mat.dot(x, threads=1)
    assert runs == [False]  # one thread asked for: never split, nothing timed
    runs.clear()
    mat.dot(rng.standard_normal((90, 9)).astype(np.float32), threads=2)
    # a new bucket is timed again
    assert len(runs) == 2 * base.SPLIT_TUNE_ROUNDS * base.SPLIT_TUNE_BLOCK
    assert "_split" not in mat.__getstate__()


@pytest.mark.parametrize("winner", [0, 1])
def test_faster_way_compares_medians_of_alternating_blocks(monkeypatch, winner):
    calls = []
    clock = {"t": 0.0}

    def fake_clock():
        clock["t"] += 1.0 if calls and calls[-1] == winner else 3.0
        return clock["t"]

    monkeypatch.setattr(base.time, "perf_counter", fake_clock)
    ways = (lambda: calls.append(0) or "a", lambda: calls.append(1) or "b")
    best, last = base.faster_way(ways, rounds=3, block=2)
    assert best == winner
    assert calls == [0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1]  # order alternates by round
    assert last == "b"  # the result of the last call


def test_dense_batch_is_never_split(monkeypatch):
    # BLAS threads itself: the dense format has no split to time
    monkeypatch.setattr(base, "BATCH_SPLIT_MIN_WORK", 1)
    mat = Dense(np.ones((4, 6), np.float32))
    np.testing.assert_allclose(mat.dot(np.ones((6, 3), np.float32), threads=2),
                               np.full((4, 3), 6.0))
    assert "_split" not in mat.__dict__


@pytest.mark.parametrize("gather", ["0", "1"])
def test_both_slice_forms_of_the_matvec_agree_with_dense(monkeypatch, gather):
    # the mat-vec runs in the form this CPU measured faster; either form is exact to float
    # summation, serial and parallel, with ω0 = 0 and ω0 ≠ 0
    monkeypatch.setenv(cser_mod.SLICE_GATHER_ENV, gather)
    cser_mod.slice_gathers_win.cache_clear()
    monkeypatch.setattr(base, "PARALLEL_MIN_WORK", 1)
    try:
        assert cser_mod.slice_gathers_win() is (gather == "1")
        rng = np.random.default_rng(5)
        idx = rng.integers(-7, 8, size=(203, 517)) * (rng.random((203, 517)) < 0.1)
        x = rng.standard_normal(517).astype(np.float32)
        for shift in (0.0, 0.06):
            w = (idx * 0.03 + shift).astype(np.float32)
            for cls in (CER, CSER):
                mat = cls.from_dense(w)
                _check_product(mat, w, x, threads=1)
                _check_product(mat, w, x, threads=1)  # the lean path, built by the first
                _check_product(mat, w, x, threads=2)
    finally:
        cser_mod.slice_gathers_win.cache_clear()


def test_slice_form_override_is_checked(monkeypatch):
    monkeypatch.setenv(cser_mod.SLICE_GATHER_ENV, "yes")
    cser_mod.slice_gathers_win.cache_clear()
    try:
        with pytest.raises(InvalidOption, match="DNNZIP_SLICE_GATHER must be 0 or 1"):
            cser_mod.slice_gathers_win()
    finally:
        cser_mod.slice_gathers_win.cache_clear()
    monkeypatch.delenv(cser_mod.SLICE_GATHER_ENV)
    assert cser_mod.slice_gathers_win() in (True, False)  # measured on this CPU


def test_time_model_rate_follows_matrix_size():
    # dense 4× faster per element on a matrix that fits in cache: log-interpolated between
    # the calibrated sizes, clamped outside them
    model = TimeModel({"dense": {1000: (4e10, 8e10, 8e10), 100_000: (1e10, 2e10, 2e10)},
                       "csr": (4e9, 1e10, 1e10), "cser": (5e9, 1.2e10, 1.3e10)})
    assert model.rate("dense", 1, 10) == pytest.approx(4e10)
    assert model.rate("dense", 1, 10_000) == pytest.approx(2e10)
    assert model.rate("dense", 8, 10**7) == pytest.approx(2e10)
    assert model.rate("csr", 1, 10**7) == model.rate("csr", 1, 10) == pytest.approx(4e9)
    assert model.predict("dense", (10, 100), 0, 1) == pytest.approx(1000 / 4e10)


@pytest.mark.parametrize("threads", [2, 3])
def test_parallel_batch_kernels_split_any_rows_and_copy_sizes(threads):
    # each task takes a run of rows (by nnz, or by row blocks) and its own copy of X, or one
    # shared copy above PRIVATE_COPY_BYTES: fewer rows than tasks, all work in one row, empty
    # rows, a Fortran-order X and an X too large to copy per task all give the dense product
    rng = np.random.default_rng(21)
    skewed = np.zeros((7, 50), np.float32)
    skewed[5] = rng.integers(1, 4, size=50)
    big_n = kernels.PRIVATE_COPY_BYTES // (4 * 16) + 10  # Xe of 16 columns over the cap
    cases = [(np.float32([[2.0, 0, -1]]), 5), (skewed, 9), (np.zeros((4, 6), np.float32), 3),
             ((rng.integers(-3, 4, (40, big_n)) * (rng.random((40, big_n)) < 0.05))
              .astype(np.float32), 16)]
    for w, b in cases:
        x = rng.standard_normal((w.shape[1], b)).astype(np.float32)
        ref = w.astype(np.float64) @ x.astype(np.float64)
        for xin in (x, np.asfortranarray(x)):
            csr = CSR.from_dense(w)
            got = {"csr": csr._product(xin, threads)}
            cser = CSER.from_dense(w)
            for mode in ("sliced", "rows"):
                got[mode] = cser._batch_product(mode, xin, threads)
            for name, y in got.items():
                assert y.shape == ref.shape, name
                np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-4, err_msg=name)
