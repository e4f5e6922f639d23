"""Deep Compression (Han, Mao, Dally 2016): prune → k-means weight sharing → Huffman.

Per tensor:
  1. prune |w| < t (t from a target sparsity, quality·std, or a global threshold);
  2. share the surviving weights: 1-D k-means with 2^bits linearly initialised centroids
     (weights that already take ≤ 2^bits values — e.g. after centroid fine-tuning — are
     kept exactly);
  3. Huffman-code the result in whichever of two layouts is smaller:
     * ``sparse`` (the paper's): the cluster index of each non-zero, plus its position as
       the number of zeros since the previous non-zero, capped at C with an escape symbol
       C meaning "C more zeros" (C, a power of two, chosen per tensor to minimise bits);
     * ``dense``: one index per weight over the codebook {0} ∪ centroids — smaller when
       few weights were pruned.

Payload: u8 layout | u64 n | u32 K | K×f32 codebook | layout part
  sparse: u64 nnz | u32 C | blob(Huffman indices) | blob(Huffman gap symbols)
  dense:  blob(Huffman indices of all n weights)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..codec import Codec, CorruptPayload, InvalidOption, Quantized, register
from ..coding import huffman
from ..prune.magnitude import check_sparsity, threshold_for_quality, threshold_for_sparsity
from ..quant.kmeans import kmeans_1d
from .base import Method, register_method
from .payload import PayloadReader, PayloadWriter

SPARSE, DENSE = 0, 1
MAX_BITS = 16
GAP_CAPS = tuple(1 << b for b in range(1, 17))


def check_bits(bits: int, what: str = "bits") -> int:
    if not (isinstance(bits, (int, np.integer)) and 1 <= int(bits) <= MAX_BITS):
        raise InvalidOption(f"{what} must be an integer in 1..{MAX_BITS}, got {bits}")
    return int(bits)


def gap_symbols(gaps: np.ndarray, cap: int) -> np.ndarray:
    """Gaps (zeros before each non-zero) as symbols < cap, each preceded by gap//cap escapes."""
    escapes = gaps // cap
    out = np.full(gaps.size + int(escapes.sum()), cap, dtype=np.int32)
    out[np.cumsum(escapes + 1) - 1] = gaps % cap
    return out


def gaps_from_symbols(symbols: np.ndarray, cap: int, nnz: int) -> np.ndarray:
    """Inverse of ``gap_symbols``; raises CorruptPayload on an inconsistent stream."""
    final = symbols < cap
    if int(final.sum()) != nnz or (symbols.size and not final[-1]):
        raise CorruptPayload("gap stream does not match the number of non-zeros")
    if np.any(symbols > cap):
        raise CorruptPayload("gap stream has symbols above the escape symbol")
    ends = np.flatnonzero(final)
    # escapes before each final symbol = its index minus the previous final's index minus 1
    escapes = np.diff(np.concatenate(([-1], ends))) - 1
    return symbols[ends].astype(np.int64) + cap * escapes.astype(np.int64)


def _best_cap(gaps: np.ndarray) -> tuple[int, float]:
    """The cap C minimising the Huffman-coded size of the gap stream (estimated by entropy)."""
    if gaps.size == 0:
        return GAP_CAPS[0], 0.0
    hist = np.bincount(gaps)
    best = (GAP_CAPS[0], np.inf)
    g = np.arange(hist.size)
    for cap in GAP_CAPS:
        counts = np.bincount(g % cap, weights=hist, minlength=cap).astype(np.int64)
        counts = np.append(counts, int((hist * (g // cap)).sum()))
        bits = huffman.entropy_bits(counts) + counts.size * 0.5  # table cost, roughly
        if bits < best[1]:
            best = (cap, bits)
        if cap > hist.size:
            break
    return best


@register
class DeepCompressionCodec(Codec):
    """Prune + k-means share + Huffman, per tensor. Exactly one of ``sparsity``, ``quality``
    or ``threshold`` chooses the pruning threshold (none: no pruning)."""

    codec_id = "deepcompression"

    def __init__(
        self,
        bits: int = 5,
        sparsity: float | None = None,
        quality: float | None = None,
        threshold: float | None = None,
    ):
        self.bits = check_bits(bits)
        given = [x is not None for x in (sparsity, quality, threshold)]
        if sum(given) > 1:
            raise InvalidOption("give at most one of sparsity, quality, threshold")
        self.sparsity = None if sparsity is None else check_sparsity(sparsity)
        if quality is not None and not quality >= 0:
            raise InvalidOption(f"quality must be >= 0, got {quality}")
        self.quality = quality
        self.threshold = threshold

    def get_config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {"id": self.codec_id, "bits": self.bits}
        for key in ("sparsity", "quality", "threshold"):
            if getattr(self, key) is not None:
                cfg[key] = getattr(self, key)
        return cfg

    # --- encoding ------------------------------------------------------------------------
    def _threshold(self, w: np.ndarray) -> float:
        if self.sparsity is not None:
            return threshold_for_sparsity(w, self.sparsity)
        if self.quality is not None:
            return threshold_for_quality(w, self.quality)
        return float(self.threshold or 0.0)

    def encode(self, array: np.ndarray) -> bytes:
        return self.encode_with_stats(array)[0]

    def encode_with_stats(self, array: np.ndarray) -> tuple[bytes, dict[str, Any]]:
        w = np.asarray(array, dtype=np.float32).reshape(-1)
        if not np.isfinite(w).all():
            raise InvalidOption("tensor has NaN or Inf values")
        n = w.size
        t = self._threshold(w)
        keep = np.abs(w) >= t if t > 0 else w != 0
        nnz = int(np.count_nonzero(keep))
        kept = w if nnz == n else w[keep]
        centroids, labels = kmeans_1d(kept, 1 << self.bits)
        del kept
        k = centroids.size
        idx_counts = huffman.symbol_counts(labels, minlength=k)
        # dense layout: one symbol per weight over {0} ∪ centroids
        dense_counts = np.concatenate(([n - nnz], idx_counts))
        dense_len = huffman.code_lengths(dense_counts)
        dense_bits = huffman.coded_bits(dense_counts, dense_len)
        # sparse layout (only worth trying when at most half the weights survive)
        sparse_bits = np.inf
        if 2 * nnz <= n:
            positions = np.flatnonzero(keep)
            gaps = np.diff(positions, prepend=-1) - 1
            del positions
            cap, _ = _best_cap(gaps)
            gsyms = gap_symbols(gaps, cap)
            gap_counts = np.bincount(gsyms, minlength=cap + 1)
            idx_len = huffman.code_lengths(idx_counts) if k else np.zeros(0, np.uint8)
            sparse_bits = huffman.coded_bits(idx_counts, idx_len) + huffman.coded_bits(
                gap_counts, huffman.code_lengths(gap_counts)
            )

        out = PayloadWriter()
        if dense_bits <= sparse_bits:
            layout, coded = DENSE, dense_bits
            codebook = np.concatenate(([np.float32(0)], centroids))
            symbols = np.zeros(n, dtype=_index_dtype(codebook.size))
            symbols[keep] = np.add(labels, 1, dtype=symbols.dtype)  # no uint8 wrap at 256
            out.u8(DENSE)
            out.u64(n)
            out.u32(codebook.size)
            out.array(codebook, "f4")
            out.blob(huffman.encode_symbols(symbols))
            del symbols
            fixed = n * max(1, int(np.ceil(np.log2(codebook.size))))
        else:
            layout, coded = SPARSE, sparse_bits
            out.u8(SPARSE)
            out.u64(n)
            out.u32(k)
            out.array(centroids, "f4")
            out.u64(nnz)
            out.u32(cap)
            out.blob(huffman.encode_symbols(labels))
            out.blob(huffman.encode_symbols(gsyms))
            fixed = nnz * max(1, int(np.ceil(np.log2(max(k, 2))))) + gsyms.size * int(
                np.ceil(np.log2(cap + 1))
            )
        err = _sum_squares(w, keep, centroids, labels)
        stats = {
            "layout": "dense" if layout == DENSE else "sparse",
            "sparsity": 1.0 - nnz / n if n else 0.0,
            "distinct": int(k + (nnz < n)),
            "entropy_bits": float(huffman.entropy_bits(dense_counts)),
            "huffman_bits": int(coded),
            "fixed_bits": int(fixed),
            "snr_db": _snr_db(_energy(w), err),
        }
        if layout == SPARSE:
            stats["gap_cap"] = cap
        return out.getvalue(), stats

    # --- decoding ------------------------------------------------------------------------
    def _parse(self, data: bytes, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """(symbols over {0} ∪ codebook for every weight, codebook with 0 first)."""
        r = PayloadReader(data)
        layout = r.u8("layout")
        n = r.u64("element count")
        expected = int(np.prod(shape, dtype=np.int64))
        if n != expected:
            raise CorruptPayload(f"payload holds {n} weights, the index says {expected}")
        k = r.u32("codebook size")
        if k > (1 << MAX_BITS) + 1:
            raise CorruptPayload(f"codebook of {k} values is larger than any codec writes")
        codebook = r.array(k, "f4", "codebook")
        if layout == DENSE:
            symbols = _decode_blob(r.blob("indices"), n)
            r.expect_end()
            if symbols.size and int(symbols.max()) >= k:
                raise CorruptPayload("index refers past the codebook")
            return symbols, codebook
        if layout != SPARSE:
            raise CorruptPayload(f"unknown layout {layout}")
        nnz = r.u64("non-zero count")
        if nnz > n:
            raise CorruptPayload(f"{nnz} non-zeros in a tensor of {n} weights")
        cap = r.u32("gap cap")
        if cap not in GAP_CAPS:
            raise CorruptPayload(f"gap cap {cap} is not one the encoder uses")
        labels = _decode_blob(r.blob("indices"), nnz)
        gsyms = _decode_blob(r.blob("gaps"), None)
        r.expect_end()
        if labels.size and int(labels.max()) >= k:
            raise CorruptPayload("index refers past the codebook")
        positions = np.cumsum(gaps_from_symbols(gsyms, cap, nnz) + 1) - 1
        if positions.size and positions[-1] >= n:
            raise CorruptPayload("non-zero position lies outside the tensor")
        symbols = np.zeros(n, dtype=_index_dtype(k + 1))
        symbols[positions] = np.add(labels, 1, dtype=symbols.dtype)
        return symbols, np.concatenate(([np.float32(0)], codebook))

    def decode(self, data: bytes, shape: tuple[int, ...]) -> np.ndarray:
        symbols, codebook = self._parse(data, shape)
        return codebook[symbols].reshape(shape)

    def decode_quantized(self, data: bytes, shape: tuple[int, ...]) -> Quantized:
        symbols, codebook = self._parse(data, shape)
        dtype = (
            np.uint8 if codebook.size <= 256 else np.uint16 if codebook.size <= 65536 else np.uint32
        )
        return Quantized(symbols.astype(dtype).reshape(shape), codebook)


def _index_dtype(size: int) -> type:
    return np.uint8 if size <= 256 else np.uint16 if size <= 65536 else np.uint32


def _sum_squares(
    w: np.ndarray, keep: np.ndarray, centroids: np.ndarray, labels: np.ndarray
) -> float:
    """Σ (w − ŵ)² without materialising ŵ: pruned weights contribute w², kept ones
    (w − centroid)², accumulated in float64 over chunks to bound memory."""
    pruned = w[~keep]
    err = float(np.dot(pruned.astype(np.float64), pruned))
    kept = w[keep] if labels.size != w.size else w
    step = 1 << 20
    for i in range(0, labels.size, step):
        d = (kept[i : i + step] - centroids[labels[i : i + step]]).astype(np.float64)
        err += float(np.dot(d, d))
    return err


def _energy(w: np.ndarray) -> float:
    """Σ w² in float64, in chunks (float32 squares of large weights would overflow)."""
    step = 1 << 20
    return float(sum(np.dot(c, c) for c in (w[i : i + step].astype(np.float64)
                                            for i in range(0, w.size, step))))  # fmt: skip


def _decode_blob(blob: bytes, count: int | None) -> np.ndarray:
    symbols = huffman.decode_symbols(blob, count)
    if count is not None and symbols.size != count:
        raise CorruptPayload(f"symbol stream holds {symbols.size} symbols, expected {count}")
    return symbols


def _snr_db(energy: float, err: float) -> float:
    if err == 0.0:
        return float("inf")
    if energy == 0.0:
        return float("-inf")
    return float(10.0 * np.log10(energy / err))


def _is_conv(shape: tuple[int, ...]) -> bool:
    return len(shape) >= 3


@register_method
class DeepCompressionMethod(Method):
    """Per-layer Deep Compression: conv tensors (≥ 3-D) get ``conv_bits``, others ``fc_bits``
    (the paper's 8 and 5), unless ``bits`` sets both. Pruning: ``sparsity`` or ``quality``
    per layer, or ``global_sparsity`` (one threshold over all coded tensors)."""

    name = "deepcompression"

    def __init__(
        self,
        bits: int | None = None,
        conv_bits: int = 8,
        fc_bits: int = 5,
        sparsity: float | None = None,
        quality: float | None = None,
        global_sparsity: float | None = None,
    ):
        if bits is not None:
            conv_bits = fc_bits = check_bits(bits)
        self.conv_bits = check_bits(conv_bits, "conv bits")
        self.fc_bits = check_bits(fc_bits, "fc bits")
        if sum(x is not None for x in (sparsity, quality, global_sparsity)) > 1:
            raise InvalidOption("give at most one of sparsity, quality, global sparsity")
        self.sparsity = None if sparsity is None else check_sparsity(sparsity)
        if quality is not None and not quality >= 0:
            raise InvalidOption(f"quality must be >= 0, got {quality}")
        self.quality = quality
        self.global_sparsity = None if global_sparsity is None else check_sparsity(global_sparsity)
        self.threshold: float | None = None

    def prepare(self, tensors) -> None:
        if self.global_sparsity is not None:
            self.threshold = global_threshold_streamed(tensors, self.global_sparsity)

    def codec_for(self, name: str, array: np.ndarray) -> Codec:
        bits = self.conv_bits if _is_conv(array.shape) else self.fc_bits
        if self.global_sparsity is not None and self.threshold is None:
            raise InvalidOption("global sparsity needs prepare() to run first")
        return DeepCompressionCodec(
            bits=bits, sparsity=self.sparsity, quality=self.quality, threshold=self.threshold
        )

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "method": self.name,
            "conv_bits": self.conv_bits,
            "fc_bits": self.fc_bits,
        }
        for key in ("sparsity", "quality", "global_sparsity", "threshold"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


def global_threshold_streamed(tensors, sparsity: float, bins: int = 1 << 16) -> float:
    """One magnitude threshold removing ``sparsity`` of all weights, found in one streamed
    pass with bounded memory: a histogram of log2|w| over 2^-64 … 2^64 in 2^16 bins
    (1/512 octave each); the threshold is the upper edge of the bin holding the cut, so it
    removes at least the asked fraction and overshoots by less than 0.14 % in magnitude."""
    lo, hi = -64.0, 64.0
    hist = np.zeros(bins + 1, dtype=np.int64)  # last bin: exact zeros
    total = 0
    for _, arr in tensors:
        mags = np.abs(np.asarray(arr, dtype=np.float32).reshape(-1))
        total += mags.size
        zero = mags == 0
        hist[bins] += int(zero.sum())
        logs = np.log2(mags[~zero])
        idx = np.clip(((logs - lo) / (hi - lo) * bins).astype(np.int64), 0, bins - 1)
        hist[:bins] += np.bincount(idx, minlength=bins)
    remove = int(np.floor(sparsity * total)) - int(hist[bins])
    if remove <= 0:
        return 0.0
    edge = int(np.searchsorted(np.cumsum(hist[:bins]), remove))  # bin holding the cut
    return float(2.0 ** (lo + (edge + 1) * (hi - lo) / bins))
