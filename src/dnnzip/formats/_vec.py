"""Explicit SIMD building blocks for the numba kernels (LLVM vector IR via ``@intrinsic``).

Why: LLVM's loop vectorizer only vectorizes a gather-reduction when the loop is long (its
vector body needs about 64 iterations); CER/CSER groups hold 5-30 elements, so the plain
loops run scalar with one dependent add chain and a mispredicted exit per group. These
intrinsics state the vector shape directly: 16 lanes of indices are loaded in one go
(8/16/32-bit, zero-extended), ``llvm.masked.gather`` fetches the 16 inputs, and the
accumulator stays a vector register until the end. On CPUs without gathers LLVM lowers
them to scalar loads, so the code stays portable. Whether a vector gather beats the scalar
loads it stands for depends on the CPU (Zen 5: about half their rate; an AVX-512 Xeon: the
gather form 13–19% faster), so the mat-vec slice comes in both forms — 16 scalar sums
(``slice_matvec``) and one gather per step (``slice_matvec_gather``) — and
``cser.slice_gathers_win`` measures which one runs.

Every intrinsic here is inlined into the calling ``@njit`` kernel and optimised with it.
Arrays must be C-contiguous; callers guarantee bounds (masked lanes never touch memory).
numba's on-disk cache only watches the file of the cached function: after editing this file,
touch ``kernels.py`` (or clear its ``__pycache__``) so the kernels are recompiled.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

LANES = 16

_i1 = ir.IntType(1)
_i32 = ir.IntType(32)
_i64 = ir.IntType(64)


def _vec(t: ir.Type, n: int) -> ir.VectorType:
    return ir.VectorType(t, n)


def _splat(builder: ir.IRBuilder, val: ir.Value, n: int) -> ir.Value:
    vt = _vec(val.type, n)
    v = builder.insert_element(ir.Constant(vt, ir.Undefined), val, ir.Constant(_i32, 0))
    mask = ir.Constant(_vec(_i32, n), [0] * n)
    return builder.shuffle_vector(v, ir.Constant(vt, ir.Undefined), mask)


def _tname(t: ir.Type) -> str:
    if isinstance(t, ir.FloatType):
        return "f32"
    if isinstance(t, ir.DoubleType):
        return "f64"
    return f"i{t.width}"


def _esize(t: ir.Type) -> int:
    return 4 if isinstance(t, ir.FloatType) else 8 if isinstance(t, ir.DoubleType) else t.width // 8


def _lane_mask(builder: ir.IRBuilder, count: ir.Value, n: int) -> ir.Value:
    lanes = ir.Constant(_vec(_i64, n), list(range(n)))
    return builder.icmp_signed("<", lanes, _splat(builder, count, n))


def _masked_load(builder, ptr, elt: ir.Type, mask, n: int) -> ir.Value:
    vt = _vec(elt, n)
    vptr = builder.bitcast(ptr, ir.PointerType(vt))
    fnty = ir.FunctionType(vt, [vptr.type, _i32, mask.type, vt])
    fn = cgutils.get_or_insert_function(
        builder.module, fnty, f"llvm.masked.load.v{n}{_tname(elt)}.p0"
    )
    zero = ir.Constant(vt, [0] * n) if isinstance(elt, ir.IntType) else ir.Constant(vt, [0.0] * n)
    return builder.call(fn, [vptr, ir.Constant(_i32, _esize(elt)), mask, zero])


def _load_indices(builder, ptr, elt: ir.Type, n: int, mask=None) -> ir.Value:
    """Load n consecutive indices and widen them: 8/16-bit → i32 (so the gather takes 32-bit
    offsets, 16 lanes per instruction), 32-bit unsigned → i64."""
    if mask is None:
        idx = builder.load(builder.bitcast(ptr, ir.PointerType(_vec(elt, n))), align=1)
    else:
        idx = _masked_load(builder, ptr, elt, mask, n)
    if elt.width < 32:
        idx = builder.zext(idx, _vec(_i32, n))
    elif elt.width == 32:
        idx = builder.zext(idx, _vec(_i64, n))
    return idx


def _gather(builder, base_ptr, idx, fty: ir.Type, mask, n: int) -> ir.Value:
    """``base_ptr[idx]`` for n lanes; masked-off lanes give 0 and read nothing.

    Written as one vector GEP so the backend emits a single 32-bit-offset gather.
    """
    gep = ir.instructions.GEPInstr(builder.block, base_ptr, [idx], True, "", source_etype=fty)
    gep.type = _vec(ir.PointerType(fty), n)
    builder._insert(gep)
    vt = _vec(fty, n)
    if mask is None:
        mask = ir.Constant(_vec(_i1, n), [1] * n)
    fnty = ir.FunctionType(vt, [gep.type, _i32, mask.type, vt])
    fn = cgutils.get_or_insert_function(
        builder.module, fnty, f"llvm.masked.gather.v{n}{_tname(fty)}.v{n}p0"
    )
    return builder.call(fn, [gep, ir.Constant(_i32, _esize(fty)), mask, ir.Constant(vt, [0.0] * n)])


def _hsum(builder, v, n: int) -> ir.Value:
    """Pairwise horizontal sum of an n-lane vector (log2 n shuffles)."""
    while n > 1:
        h = n // 2
        lo = builder.shuffle_vector(v, v, ir.Constant(_vec(_i32, h), list(range(h))))
        hi = builder.shuffle_vector(v, v, ir.Constant(_vec(_i32, h), list(range(h, n))))
        v = builder.fadd(lo, hi)
        n = h
    return builder.extract_element(v, ir.Constant(_i32, 0))


def _convert_float(builder, v, src: ir.Type, dst: ir.Type) -> ir.Value:
    """float32 ↔ float64 (scalars or vectors) for data whose dtype differs from the input."""
    s = src.element if isinstance(src, ir.VectorType) else src
    d = dst.element if isinstance(dst, ir.VectorType) else dst
    return builder.fpext(v, dst) if _esize(d) > _esize(s) else builder.fptrunc(v, dst)


def _data(context, builder, aryty, value):
    return context.make_array(aryty)(context, builder, value).data


def _check_float_array(ary, name: str) -> None:
    if not isinstance(ary, types.Array) or ary.dtype not in (types.float32, types.float64):
        raise TypeError(f"{name} must be a float32/float64 array, got {ary}")


def _check_index_array(ary, name: str) -> None:
    if not isinstance(ary, types.Array) or ary.dtype not in (
        types.uint8, types.uint16, types.uint32, types.int32, types.int64
    ):
        raise TypeError(f"{name} must be an integer index array, got {ary}")


@intrinsic
def group_sum(typingctx, x, col, start, stop):
    """Σ x[col[k]] for k in [start, stop): 16-lane masked gathers, one vector accumulator."""
    _check_float_array(x, "x")
    _check_index_array(col, "col")
    sig = x.dtype(x, col, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        xv, cv, a, b = args
        xty, cty = signature.args[0], signature.args[1]
        fty = context.get_value_type(xty.dtype)
        ity = context.get_value_type(cty.dtype)
        xp, cp = _data(context, builder, xty, xv), _data(context, builder, cty, cv)
        vt = _vec(fty, LANES)
        acc = cgutils.alloca_once_value(builder, ir.Constant(vt, [0.0] * LANES))
        count = builder.sdiv(builder.add(builder.sub(b, a), ir.Constant(_i64, LANES - 1)),
                             ir.Constant(_i64, LANES))
        with cgutils.for_range(builder, count) as loop:
            k = builder.add(a, builder.mul(loop.index, ir.Constant(_i64, LANES)))
            mask = _lane_mask(builder, builder.sub(b, k), LANES)
            idx = _load_indices(builder, builder.gep(cp, [k]), ity, LANES, mask)
            g = _gather(builder, xp, idx, fty, mask, LANES)
            builder.store(builder.fadd(builder.load(acc), g), acc)
        return _hsum(builder, builder.load(acc), LANES)

    return sig, codegen


def _scatter_add_rows(builder, yp, rows_p, o, vals, fty, n: int) -> None:
    """y[rows[o + lane]] += vals[lane] for each lane (rows may repeat: done lane by lane)."""
    for lane in range(n):
        r = builder.load(builder.gep(rows_p, [builder.add(o, ir.Constant(_i64, lane))]))
        r = builder.sext(r, _i64) if r.type.width < 64 else r
        p = builder.gep(yp, [r])
        v = builder.extract_element(vals, ir.Constant(_i32, lane))
        builder.store(builder.fadd(builder.load(p), v), p)


def _make_slice_matvec(vector_gather: bool):
    @intrinsic
    def slice_matvec(typingctx, x, col, base, length, lane_w, lane_row, o, y):
        """One slice of 16 groups: s[lane] = Σ_l x[col[base + 16·l + lane]], l < length, then
        y[lane_row[o + lane]] += lane_w[o + lane]·s[lane].

        The sliced layout interleaves 16 groups lane by lane (shorter ones padded with the
        index of a zero input), so every step adds an element to 16 groups, no lane ever
        branches, and 16 independent sums hide the add latency. The 16 multiplies (one per
        group = per distinct value of a row) are one vector multiply. The inputs are fetched
        either by one 16-lane gather per step (``vector_gather``) or by 16 scalar loads into 16
        scalar sums: on Zen 5 the scalar form runs at the load ports' rate and the gather at
        about half of it (benchmarks/formats.py, ablation).
        """
        _check_float_array(x, "x")
        _check_index_array(col, "col")
        sig = types.void(x, col, types.int64, types.int64, lane_w, lane_row, types.int64, y)

        def codegen(context, builder, signature, args):
            xv, cv, base_v, length_v, wv, rv, o_v, yv = args
            xty, cty, _, _, wty, rty, _, yty = signature.args
            fty = context.get_value_type(xty.dtype)
            ity = context.get_value_type(cty.dtype)
            xp, cp = _data(context, builder, xty, xv), _data(context, builder, cty, cv)
            vt = _vec(fty, LANES)
            if vector_gather:
                total = _slice_sums_gather(builder, xp, cp, ity, fty, base_v, length_v)
            else:
                total = _slice_sums_scalar(builder, xp, cp, fty, base_v, length_v)
            wp = builder.gep(_data(context, builder, wty, wv), [o_v])
            w = builder.load(builder.bitcast(wp, ir.PointerType(vt)), align=_esize(fty))
            _scatter_add_rows(builder, _data(context, builder, yty, yv),
                              _data(context, builder, rty, rv), o_v, builder.fmul(total, w),
                              fty, LANES)
            return context.get_dummy_value()

        return sig, codegen

    return slice_matvec


def _slice_sums_gather(builder, xp, cp, ity, fty, base_v, length_v) -> ir.Value:
    """The 16 lane sums of a slice by 16-lane gathers, two vector accumulators."""
    vt = _vec(fty, LANES)
    zero = ir.Constant(vt, [0.0] * LANES)
    acc0 = cgutils.alloca_once_value(builder, zero)
    acc1 = cgutils.alloca_once_value(builder, zero)
    pairs = builder.sdiv(length_v, ir.Constant(_i64, 2))
    with cgutils.for_range(builder, pairs) as loop:
        k = builder.add(base_v, builder.mul(loop.index, ir.Constant(_i64, 2 * LANES)))
        for acc, off in ((acc0, 0), (acc1, LANES)):
            kk = builder.add(k, ir.Constant(_i64, off))
            idx = _load_indices(builder, builder.gep(cp, [kk]), ity, LANES)
            g = _gather(builder, xp, idx, fty, None, LANES)
            builder.store(builder.fadd(builder.load(acc), g), acc)
    odd = builder.icmp_signed("!=", builder.srem(length_v, ir.Constant(_i64, 2)),
                              ir.Constant(_i64, 0))
    with builder.if_then(odd):
        kk = builder.add(base_v, builder.mul(builder.sub(length_v, ir.Constant(_i64, 1)),
                                             ir.Constant(_i64, LANES)))
        idx = _load_indices(builder, builder.gep(cp, [kk]), ity, LANES)
        g = _gather(builder, xp, idx, fty, None, LANES)
        builder.store(builder.fadd(builder.load(acc0), g), acc0)
    return builder.fadd(builder.load(acc0), builder.load(acc1))


def _slice_sums_scalar(builder, xp, cp, fty, base_v, length_v) -> ir.Value:
    """The 16 lane sums of a slice by scalar loads into 16 scalar accumulators (registers
    after mem2reg), packed into one vector at the end."""
    accs = [cgutils.alloca_once_value(builder, ir.Constant(fty, 0.0)) for _ in range(LANES)]
    with cgutils.for_range(builder, length_v) as loop:
        k = builder.add(base_v, builder.mul(loop.index, ir.Constant(_i64, LANES)))
        for lane, acc in enumerate(accs):
            r = builder.load(builder.gep(cp, [builder.add(k, ir.Constant(_i64, lane))]))
            r = builder.zext(r, _i64) if r.type.width < 64 else r
            v = builder.load(builder.gep(xp, [r]))
            builder.store(builder.fadd(builder.load(acc), v), acc)
    total = ir.Constant(_vec(fty, LANES), ir.Undefined)
    for lane, acc in enumerate(accs):
        total = builder.insert_element(total, builder.load(acc), ir.Constant(_i32, lane))
    return total


slice_matvec = _make_slice_matvec(vector_gather=False)
slice_matvec_gather = _make_slice_matvec(vector_gather=True)


def _make_slice_matmat(width: int):
    @intrinsic
    def slice_matmat(typingctx, X, col, base, length, j0, lane_w, lane_row, o, Y):
        """Batch form of ``slice_matvec`` on ``width`` (8 or 16) columns starting at j0:
        acc[lane] = Σ_l X[col[base + 16·l + lane], j0:j0+width], then
        Y[lane_row[o+lane], j0:j0+width] += lane_w[o+lane]·acc[lane].

        Each index selects a contiguous row segment of X (row-major n × B'), so no gather is
        needed; 16 independent vector accumulators hide the add latency.
        """
        _check_float_array(X, "X")
        _check_index_array(col, "col")
        sig = types.void(X, col, types.int64, types.int64, types.int64, lane_w, lane_row,
                         types.int64, Y)

        def codegen(context, builder, signature, args):
            Xv, cv, base_v, length_v, j0_v, wv, rv, o_v, Yv = args
            Xty, cty, _, _, _, wty, rty, _, Yty = signature.args
            fty = context.get_value_type(Xty.dtype)
            Xa = context.make_array(Xty)(context, builder, Xv)
            Ya = context.make_array(Yty)(context, builder, Yv)
            ldx = builder.extract_value(Xa.shape, 1)
            ldy = builder.extract_value(Ya.shape, 1)
            cp = _data(context, builder, cty, cv)
            wp = _data(context, builder, wty, wv)
            rp = _data(context, builder, rty, rv)
            vt = _vec(fty, width)
            zero = ir.Constant(vt, [0.0] * width)
            accs = [cgutils.alloca_once_value(builder, zero) for _ in range(LANES)]
            align = _esize(fty)
            with cgutils.for_range(builder, length_v) as loop:
                k = builder.add(base_v, builder.mul(loop.index, ir.Constant(_i64, LANES)))
                for lane in range(LANES):
                    r = builder.load(builder.gep(cp, [builder.add(k, ir.Constant(_i64, lane))]))
                    r = builder.zext(r, _i64) if r.type.width < 64 else r
                    p = builder.gep(Xa.data, [builder.add(builder.mul(r, ldx), j0_v)])
                    v = builder.load(builder.bitcast(p, ir.PointerType(vt)), align=align)
                    builder.store(builder.fadd(builder.load(accs[lane]), v), accs[lane])
            for lane in range(LANES):
                ol = builder.add(o_v, ir.Constant(_i64, lane))
                w = builder.load(builder.gep(wp, [ol]))
                r = builder.load(builder.gep(rp, [ol]))
                r = builder.sext(r, _i64) if r.type.width < 64 else r
                p = builder.bitcast(builder.gep(Ya.data, [builder.add(builder.mul(r, ldy), j0_v)]),
                                    ir.PointerType(vt))
                scaled = builder.fmul(_splat(builder, w, width), builder.load(accs[lane]))
                upd = builder.fadd(builder.load(p, align=align), scaled)
                builder.store(upd, p, align=align)
            return context.get_dummy_value()

        return sig, codegen

    return slice_matmat


slice_matmat8 = _make_slice_matmat(8)
slice_matmat16 = _make_slice_matmat(16)


@intrinsic
def row_dot(typingctx, data, ind, x, start, stop):
    """Σ data[k]·x[ind[k]] for k in [start, stop): CSR row, 16-lane masked gathers + FMA."""
    _check_float_array(x, "x")
    _check_index_array(ind, "ind")
    sig = x.dtype(data, ind, x, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        dv, iv, xv, a, b = args
        dty, ity_, xty = signature.args[:3]
        fty = context.get_value_type(xty.dtype)
        dfty = context.get_value_type(dty.dtype)
        ity = context.get_value_type(ity_.dtype)
        dp, ip = _data(context, builder, dty, dv), _data(context, builder, ity_, iv)
        xp = _data(context, builder, xty, xv)
        vt = _vec(fty, LANES)
        acc = cgutils.alloca_once_value(builder, ir.Constant(vt, [0.0] * LANES))
        count = builder.sdiv(builder.add(builder.sub(b, a), ir.Constant(_i64, LANES - 1)),
                             ir.Constant(_i64, LANES))
        with cgutils.for_range(builder, count) as loop:
            k = builder.add(a, builder.mul(loop.index, ir.Constant(_i64, LANES)))
            mask = _lane_mask(builder, builder.sub(b, k), LANES)
            idx = _load_indices(builder, builder.gep(ip, [k]), ity, LANES, mask)
            g = _gather(builder, xp, idx, fty, mask, LANES)
            w = _masked_load(builder, builder.gep(dp, [k]), dfty, mask, LANES)
            if dfty != fty:
                w = _convert_float(builder, w, _vec(dfty, LANES), vt)
            builder.store(builder.fadd(builder.load(acc), builder.fmul(w, g)), acc)
        return _hsum(builder, builder.load(acc), LANES)

    return sig, codegen


def _make_row_axpy(width: int, n_acc: int = 4):
    @intrinsic
    def row_axpy(typingctx, data, ind, X, start, stop, j0, Y, i):
        """Y[i, j0:j0+w] = Σ_k data[k]·X[ind[k], j0:j0+w]: a CSR row against a batch, the
        loop unrolled by four over ``n_acc`` vector accumulators of w columns (w·n_acc ≤ 64
        floats: 16 AVX2 / 4 AVX-512 registers)."""
        _check_float_array(X, "X")
        _check_index_array(ind, "ind")
        sig = types.void(data, ind, X, types.int64, types.int64, types.int64, Y, types.int64)

        def codegen(context, builder, signature, args):
            dv, iv, Xv, a, b, j0_v, Yv, i_v = args
            dty, ity_, Xty, _, _, _, Yty, _ = signature.args
            fty = context.get_value_type(Xty.dtype)
            dfty = context.get_value_type(dty.dtype)
            Xa = context.make_array(Xty)(context, builder, Xv)
            Ya = context.make_array(Yty)(context, builder, Yv)
            ldx = builder.extract_value(Xa.shape, 1)
            ldy = builder.extract_value(Ya.shape, 1)
            dp, ip = _data(context, builder, dty, dv), _data(context, builder, ity_, iv)
            vt = _vec(fty, width)
            align = _esize(fty)
            zero = ir.Constant(vt, [0.0] * width)
            accs = [cgutils.alloca_once_value(builder, zero) for _ in range(n_acc)]

            def step(k, acc):
                r = builder.load(builder.gep(ip, [k]))
                if r.type.width < 64:
                    r = builder.zext(r, _i64)
                w = builder.load(builder.gep(dp, [k]))
                if dfty != fty:
                    w = _convert_float(builder, w, dfty, fty)
                p = builder.gep(Xa.data, [builder.add(builder.mul(r, ldx), j0_v)])
                v = builder.load(builder.bitcast(p, ir.PointerType(vt)), align=align)
                prod = builder.fmul(_splat(builder, w, width), v)
                builder.store(builder.fadd(builder.load(acc), prod), acc)

            quads = builder.sdiv(builder.sub(b, a), ir.Constant(_i64, 4))
            with cgutils.for_range(builder, quads) as loop:
                k = builder.add(a, builder.mul(loop.index, ir.Constant(_i64, 4)))
                for u in range(4):
                    step(builder.add(k, ir.Constant(_i64, u)), accs[u % n_acc])
            tail0 = builder.add(a, builder.mul(quads, ir.Constant(_i64, 4)))
            with cgutils.for_range(builder, builder.sub(b, tail0)) as loop:
                step(builder.add(tail0, loop.index), accs[0])
            parts = [builder.load(a) for a in accs]
            while len(parts) > 1:  # pairwise: ((a0 + a1) + (a2 + a3)) as before for four
                parts = [builder.fadd(parts[j], parts[j + 1]) for j in range(0, len(parts), 2)]
            total = parts[0]
            p = builder.gep(Ya.data, [builder.add(builder.mul(i_v, ldy), j0_v)])
            builder.store(total, builder.bitcast(p, ir.PointerType(vt)), align=align)
            return context.get_dummy_value()

        return sig, codegen

    return row_axpy


row_axpy8 = _make_row_axpy(8)
row_axpy16 = _make_row_axpy(16)
row_axpy32 = _make_row_axpy(32, 2)
row_axpy64 = _make_row_axpy(64, 1)


def _make_group_rows_matmat(width: int, q: int):
    @intrinsic
    def group_rows_matmat(typingctx, X, colI, OmegaPtr, gw, g0, g1, j0, Y, i):
        """Y[i, j0:j0+q·w] = Σ_groups g in [g0, g1) gw[g]·Σ_{k in g} X[colI[k], j0:j0+q·w].

        Batch kernel on the canonical row/group arrays: each element adds a contiguous row
        segment of X (q vectors of w floats, up to 64 columns), two interleaved sets of group
        accumulators hide the add latency, and one multiply-add per group and vector applies
        the shared value — q·w columns per pass, as a dense row-major operand allows.
        """
        _check_float_array(X, "X")
        _check_index_array(colI, "colI")
        sig = types.void(X, colI, OmegaPtr, gw, types.int64, types.int64, types.int64, Y,
                         types.int64)

        def codegen(context, builder, signature, args):
            Xv, cv, pv, wv, g0_v, g1_v, j0_v, Yv, i_v = args
            Xty, cty, pty, wty, _, _, _, Yty, _ = signature.args
            fty = context.get_value_type(Xty.dtype)
            Xa = context.make_array(Xty)(context, builder, Xv)
            Ya = context.make_array(Yty)(context, builder, Yv)
            ldx = builder.extract_value(Xa.shape, 1)
            ldy = builder.extract_value(Ya.shape, 1)
            cp = _data(context, builder, cty, cv)
            pp = _data(context, builder, pty, pv)
            wp = _data(context, builder, wty, wv)
            vt = _vec(fty, width)
            align = _esize(fty)
            zero = ir.Constant(vt, [0.0] * width)
            acc = [cgutils.alloca_once_value(builder, zero) for _ in range(q)]
            s0 = [cgutils.alloca_once_value(builder, zero) for _ in range(q)]
            s1 = [cgutils.alloca_once_value(builder, zero) for _ in range(q)]

            def widen(v):
                return builder.zext(v, _i64) if v.type.width < 64 else v

            def add_row(k, sums):
                r = widen(builder.load(builder.gep(cp, [k])))
                base = builder.add(builder.mul(r, ldx), j0_v)
                for u in range(q):
                    p = builder.gep(Xa.data, [builder.add(base, ir.Constant(_i64, u * width))])
                    v = builder.load(builder.bitcast(p, ir.PointerType(vt)), align=align)
                    builder.store(builder.fadd(builder.load(sums[u]), v), sums[u])

            with cgutils.for_range(builder, builder.sub(g1_v, g0_v)) as gl:
                g = builder.add(g0_v, gl.index)
                a = widen(builder.load(builder.gep(pp, [g])))
                b = widen(builder.load(builder.gep(pp, [builder.add(g, ir.Constant(_i64, 1))])))
                for u in range(q):
                    builder.store(zero, s0[u])
                    builder.store(zero, s1[u])
                pairs = builder.sdiv(builder.sub(b, a), ir.Constant(_i64, 2))
                with cgutils.for_range(builder, pairs) as kl:
                    k = builder.add(a, builder.mul(kl.index, ir.Constant(_i64, 2)))
                    add_row(k, s0)
                    add_row(builder.add(k, ir.Constant(_i64, 1)), s1)
                odd = builder.icmp_signed("!=", builder.srem(builder.sub(b, a),
                                                             ir.Constant(_i64, 2)),
                                          ir.Constant(_i64, 0))
                with builder.if_then(odd):
                    add_row(builder.sub(b, ir.Constant(_i64, 1)), s0)
                w = builder.load(builder.gep(wp, [g]))
                if w.type != fty:
                    w = _convert_float(builder, w, w.type, fty)
                wv_ = _splat(builder, w, width)
                for u in range(q):
                    s = builder.fadd(builder.load(s0[u]), builder.load(s1[u]))
                    builder.store(builder.fadd(builder.load(acc[u]), builder.fmul(wv_, s)), acc[u])
            base = builder.add(builder.mul(i_v, ldy), j0_v)
            for u in range(q):
                p = builder.gep(Ya.data, [builder.add(base, ir.Constant(_i64, u * width))])
                p = builder.bitcast(p, ir.PointerType(vt))
                builder.store(builder.fadd(builder.load(p, align=align), builder.load(acc[u])), p,
                              align=align)
            return context.get_dummy_value()

        return sig, codegen

    return group_rows_matmat


group_rows_matmat8 = _make_group_rows_matmat(8, 1)
group_rows_matmat16 = _make_group_rows_matmat(16, 1)
group_rows_matmat32 = _make_group_rows_matmat(16, 2)
group_rows_matmat48 = _make_group_rows_matmat(16, 3)
group_rows_matmat64 = _make_group_rows_matmat(16, 4)


def _make_slice_panel(width: int, lanes: int):
    @intrinsic
    def slice_panel(typingctx, Xp, col, base, length, lane0, lane_w, lane_row, o, Yp):
        """Batch form of ``slice_matvec`` on one column panel, ``lanes`` groups of a slice:
        acc[g] = Σ_l Xp[col[base + 16·l + lane0 + g], :] for g < lanes, then
        Yp[lane_row[o + lane0 + g], :] += lane_w[o + lane0 + g]·acc[g].

        Xp (n+1) × width and Yp m × width are panels stored contiguously (row stride =
        width, one or two AVX2 registers of float32), so each index selects one aligned
        segment that stays in L1/L2 for the whole panel, and the ``lanes`` accumulators fit
        the 16 vector registers of AVX2 with room for the loads.
        """
        _check_float_array(Xp, "Xp")
        _check_index_array(col, "col")
        sig = types.void(Xp, col, types.int64, types.int64, types.int64, lane_w, lane_row,
                         types.int64, Yp)

        def codegen(context, builder, signature, args):
            Xv, cv, base_v, length_v, lane0_v, wv, rv, o_v, Yv = args
            Xty, cty, _, _, _, wty, rty, _, Yty = signature.args
            fty = context.get_value_type(Xty.dtype)
            xp = _data(context, builder, Xty, Xv)
            yp = _data(context, builder, Yty, Yv)
            cp = _data(context, builder, cty, cv)
            wp = _data(context, builder, wty, wv)
            rp = _data(context, builder, rty, rv)
            vt = _vec(fty, width)
            zero = ir.Constant(vt, [0.0] * width)
            accs = [cgutils.alloca_once_value(builder, zero) for _ in range(lanes)]
            align = _esize(fty)
            wide = ir.Constant(_i64, width)
            start = builder.add(base_v, lane0_v)
            with cgutils.for_range(builder, length_v) as loop:
                k = builder.add(start, builder.mul(loop.index, ir.Constant(_i64, LANES)))
                for g in range(lanes):
                    r = builder.load(builder.gep(cp, [builder.add(k, ir.Constant(_i64, g))]))
                    r = builder.zext(r, _i64) if r.type.width < 64 else r
                    p = builder.gep(xp, [builder.mul(r, wide)])
                    v = builder.load(builder.bitcast(p, ir.PointerType(vt)), align=align)
                    builder.store(builder.fadd(builder.load(accs[g]), v), accs[g])
            for g in range(lanes):
                ol = builder.add(builder.add(o_v, lane0_v), ir.Constant(_i64, g))
                w = builder.load(builder.gep(wp, [ol]))
                r = builder.load(builder.gep(rp, [ol]))
                r = builder.sext(r, _i64) if r.type.width < 64 else r
                p = builder.bitcast(builder.gep(yp, [builder.mul(r, wide)]), ir.PointerType(vt))
                scaled = builder.fmul(_splat(builder, w, width), builder.load(accs[g]))
                builder.store(builder.fadd(builder.load(p, align=align), scaled), p, align=align)
            return context.get_dummy_value()

        return sig, codegen

    return slice_panel


#: panel widths and groups per pass of the panel batch kernel: 8 accumulator registers of
#: AVX2 either way (8 groups × 8 floats, or 4 groups × 16 floats: fewer index loads per float)
slice_panel8 = _make_slice_panel(8, 8)
slice_panel16 = _make_slice_panel(16, 4)
