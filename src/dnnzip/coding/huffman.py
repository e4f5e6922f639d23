"""Canonical Huffman coding of non-negative integer symbols (Deep Compression, stage 3).

Why: after pruning and weight sharing, the k-means indices and the run-length gaps between
non-zeros are far from uniform. A Huffman code spends  Σ_s c_s·ℓ_s  bits for symbol counts
c_s and code lengths ℓ_s, less than one bit per symbol above the order-0 entropy
H = Σ_s c_s·log2(N / c_s)  (Deep Compression saves 20–30 % over fixed-length codes this way).

Conventions
-----------
* A code is its table of code lengths ``lengths[s]`` (uint8, 0 = symbol unused, at most
  ``MAX_CODE_LEN``). Codes are canonical — codewords are consecutive integers in order of
  (length, symbol) — so the table alone defines the code, and the table is what is stored
  (``pack_lengths``, a few bytes for small alphabets).
* The one-symbol code: a table with exactly one non-zero entry codes that symbol with
  **0 bits** (the bit stream is empty; the count alone rebuilds the data). ``code_lengths``
  marks the sole used symbol with length 1 so that the table still names the symbol;
  ``coded_bits`` counts it as 0 bits.
* Any other table must satisfy Kraft's inequality Σ 2^−ℓ ≤ 1 (``code_lengths`` always
  produces complete codes, Σ 2^−ℓ = 1).
* Bits are packed MSB-first (``bitio``); a stream is zero padded to a whole byte.

Decoding looks the next ``LUT_BITS`` bits up in a table (symbol and length of every code of
at most ``LUT_BITS`` bits); longer codes go through the canonical slow path, which compares
the next ℓ bits with the first code of each length ℓ in turn.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..codec import CorruptPayload, InvalidOption
from .bitio import (
    alloc_words,
    bytes_to_words,
    flush_bits,
    peek64,
    put_bits,
    read_varint,
    words_to_bytes,
    write_varint,
)

__all__ = [
    "LUT_BITS",
    "MAX_ALPHABET",
    "MAX_CODE_LEN",
    "code_lengths",
    "coded_bits",
    "decode",
    "decode_symbols",
    "encode",
    "encode_symbols",
    "entropy_bits",
    "pack_lengths",
    "unpack_lengths",
]

#: Longest codeword accepted anywhere (a codeword is read from one 64-bit window).
MAX_CODE_LEN = 32
#: Largest alphabet (table size) accepted; symbols are 0 .. MAX_ALPHABET − 1.
MAX_ALPHABET = 1 << 24
#: Width of the decoding lookup table (2^11 int32 entries = 8 KiB, stays in L1).
LUT_BITS = 11
#: A self-contained stream (``decode_symbols``) whose code has a single symbol carries no
#: bits to bound its count; above this many symbols the caller must pass the expected count.
MAX_UNCHECKED_COUNT = 1 << 28


# ----------------------------------------------------------------------------- code design


@njit(cache=True)
def _huffman_depths(w):
    """Leaf depths of a Huffman tree for ascending weights ``w`` (n >= 2), two-queue method.

    Leaves are consumed in ascending order and internal nodes are created in non-decreasing
    weight order, so the two lightest nodes are always at the heads of the two queues: O(n).
    """
    n = w.size
    m = 2 * n - 1
    weight = np.zeros(m, np.int64)
    parent = np.zeros(m, np.int64)
    weight[:n] = w
    leaf = 0
    node = n
    for k in range(n, m):
        for _ in range(2):
            if leaf < n and (node >= k or weight[leaf] <= weight[node]):
                a = leaf
                leaf += 1
            else:
                a = node
                node += 1
            parent[a] = k
            weight[k] += weight[a]
    depth = np.zeros(m, np.int64)
    for k in range(m - 2, -1, -1):
        depth[k] = depth[parent[k]] + 1
    return depth[:n]


@njit(cache=True)
def _limit_lengths(bl, max_len):
    """Make a complete code's length histogram ``bl`` fit in ``max_len`` bits, in place.

    JPEG (ITU T.81, Annex K.3) procedure: take two sibling leaves at the deepest level i;
    one symbol moves up into their parent (a leaf at i − 1), the other becomes the sibling
    of a leaf from the deepest non-empty level j < i − 1, which moves down to j + 1. Kraft's
    sum is unchanged (−2·2^−i + 2^−(i−1) + 2·2^−(j+1) − 2^−j = 0): the code stays complete.
    Returns False if impossible (more symbols than 2^max_len).
    """
    for i in range(bl.size - 1, max_len, -1):
        while bl[i] > 0:
            j = i - 2
            while j > 0 and bl[j] == 0:
                j -= 1
            if j <= 0:
                return False
            bl[i] -= 2
            bl[i - 1] += 1
            bl[j + 1] += 2
            bl[j] -= 1
    return True


def code_lengths(counts: np.ndarray, max_len: int = 24) -> np.ndarray:
    """Length-limited Huffman code lengths for symbol ``counts`` (uint8, 0 = unused symbol).

    Plain Huffman is optimal; if its deepest leaf exceeds ``max_len`` the lengths are
    reshaped with the JPEG Annex K.3 procedure (near-optimal; touches only rare symbols).
    Ties are broken by symbol index, so the result is deterministic.
    """
    c = np.asarray(counts)
    if c.ndim != 1:
        raise InvalidOption(f"counts must be a 1-D array, got shape {c.shape}")
    if c.size > MAX_ALPHABET:
        raise InvalidOption(f"alphabet of {c.size} symbols exceeds the limit {MAX_ALPHABET}")
    if c.size and not (np.issubdtype(c.dtype, np.integer) or np.issubdtype(c.dtype, np.bool_)):
        raise InvalidOption(f"counts must be integers, got dtype {c.dtype}")
    c = c.astype(np.int64)
    if c.size and c.min() < 0:
        raise InvalidOption("counts must be non-negative")
    if isinstance(max_len, bool) or not isinstance(max_len, (int, np.integer)):
        raise InvalidOption(f"max_len must be an integer, got {max_len!r}")
    if not 1 <= max_len <= MAX_CODE_LEN:
        raise InvalidOption(f"max_len must be in [1, {MAX_CODE_LEN}], got {max_len}")
    lengths = np.zeros(c.size, dtype=np.uint8)
    used = np.flatnonzero(c)
    if used.size == 0:
        return lengths
    if used.size == 1:
        lengths[used[0]] = 1  # the one-symbol code: 0 bits per symbol, see module doc
        return lengths
    if used.size > (1 << int(max_len)):
        raise InvalidOption(
            f"{used.size} used symbols cannot get distinct codes of at most {max_len} bits"
        )
    if c.sum(dtype=np.float64) >= 2.0**62:
        raise InvalidOption("total count too large (>= 2**62)")
    order = used[np.argsort(c[used], kind="stable")]  # ascending count, ties by symbol
    depths = _huffman_depths(c[order])
    bl = np.bincount(depths).astype(np.int64)
    if bl.size - 1 > max_len and not _limit_lengths(bl, int(max_len)):
        raise InvalidOption(f"cannot limit the code to {max_len} bits")
    # longest codes to the rarest symbols (never worse than the tree's own assignment)
    per_leaf = np.repeat(np.arange(bl.size, dtype=np.int64)[::-1], bl[::-1])
    lengths[order] = per_leaf.astype(np.uint8)
    return lengths


def _as_lengths(lengths: np.ndarray, error: type[Exception] = InvalidOption) -> np.ndarray:
    arr = np.asarray(lengths)
    if arr.ndim != 1:
        raise error(f"code lengths must be a 1-D array, got shape {arr.shape}")
    if arr.size > MAX_ALPHABET:
        raise error(f"alphabet of {arr.size} symbols exceeds the limit {MAX_ALPHABET}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise error(f"code lengths must be integers, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() > MAX_CODE_LEN):
        raise error(f"code lengths must be in [0, {MAX_CODE_LEN}]")
    return np.ascontiguousarray(arr, dtype=np.uint8)


def _sole_symbol(lengths: np.ndarray) -> int:
    """The symbol of a one-symbol code, -1 if the table has 0 or >= 2 used symbols."""
    used = np.flatnonzero(lengths)
    return int(used[0]) if used.size == 1 else -1


def coded_bits(counts: np.ndarray, lengths: np.ndarray) -> int:
    """Bits the code spends on data with these symbol ``counts``: Σ c_s·ℓ_s (0 for a
    one-symbol code). A symbol with a non-zero count must have a code."""
    c = np.asarray(counts)
    if c.size and not np.issubdtype(c.dtype, np.integer):
        raise InvalidOption(f"counts must be integers, got dtype {c.dtype}")
    c = c.astype(np.int64).reshape(-1)
    lens = _as_lengths(lengths)
    if c.size > lens.size and c[lens.size :].any():
        raise InvalidOption("counts has symbols beyond the code table")
    sole = _sole_symbol(lens)
    c = c[: lens.size]
    lens = lens[: c.size]
    if (c[lens == 0] != 0).any():
        raise InvalidOption("a counted symbol has no code (length 0)")
    if sole >= 0:
        return 0
    return int(np.dot(c, lens.astype(np.int64)))


def entropy_bits(counts: np.ndarray) -> float:
    """Order-0 entropy of data with these symbol counts, in bits: Σ c_s·log2(N / c_s)."""
    c = np.asarray(counts, dtype=np.float64).reshape(-1)
    c = c[c > 0]
    if c.size == 0:
        return 0.0
    n = c.sum()
    return float(n * np.log2(n) - np.dot(c, np.log2(c)))


# ----------------------------------------------------------------------------- canonical code


@njit(cache=True)
def _canonical(lengths, lut_bits):
    """Canonical codes and decoding tables of a length table.

    first[ℓ] = (first[ℓ−1] + cnt[ℓ−1]) << 1 is the first codeword of length ℓ; symbols of
    length ℓ get first[ℓ], first[ℓ]+1, ... in symbol order. Kraft's inequality holds iff
    first[ℓ] + cnt[ℓ] <= 2^ℓ for every ℓ (else ``ok`` is False).
    Returns (ok, codes, first, cnt, offset, sorted_syms, lut, max_len).
    """
    a = lengths.size
    cnt = np.zeros(MAX_CODE_LEN + 1, np.int64)
    for s in range(a):
        cnt[lengths[s]] += 1
    cnt[0] = 0
    first = np.zeros(MAX_CODE_LEN + 1, np.int64)
    offset = np.zeros(MAX_CODE_LEN + 1, np.int64)
    ok = True
    code = np.int64(0)
    off = np.int64(0)
    max_len = 0
    for ln in range(1, MAX_CODE_LEN + 1):
        code = (code + cnt[ln - 1]) << 1
        first[ln] = code
        offset[ln] = off
        off += cnt[ln]
        if cnt[ln] > 0:
            max_len = ln
            if code + cnt[ln] > (np.int64(1) << ln):
                ok = False
    sorted_syms = np.zeros(off, np.int64)
    codes = np.zeros(a, np.uint64)
    fill = offset.copy()
    for s in range(a):
        ln = lengths[s]
        if ln > 0:
            k = fill[ln]
            sorted_syms[k] = s
            codes[s] = first[ln] + (k - offset[ln])
            fill[ln] = k + 1
    lut = np.zeros(np.int64(1) << lut_bits, np.int32)
    if ok:
        for ln in range(1, min(lut_bits, max_len) + 1):
            span = np.int64(1) << (lut_bits - ln)
            for k in range(cnt[ln]):
                entry = np.int32((sorted_syms[offset[ln] + k] << 6) | ln)
                start = (first[ln] + k) * span
                for e in range(start, start + span):
                    lut[e] = entry
    return ok, codes, first, cnt, offset, sorted_syms, lut, max_len


@njit(cache=True)
def _count_bits(symbols, lengths):
    """Σ lengths[symbols], or -1 - i if symbols[i] has no code."""
    a = lengths.size
    total = np.int64(0)
    for i in range(symbols.size):
        s = np.int64(symbols[i])
        if s < 0 or s >= a or lengths[s] == 0:
            return -1 - i
        total += lengths[s]
    return total


@njit(cache=True)
def _encode_kernel(symbols, codes, lengths, words):
    wpos = 0
    acc = np.uint64(0)
    nacc = 0
    for i in range(symbols.size):
        s = np.int64(symbols[i])
        wpos, acc, nacc = put_bits(words, wpos, acc, nacc, codes[s], np.int64(lengths[s]))
    return flush_bits(words, wpos, acc, nacc)


@njit(cache=True)
def _decode_kernel(words, nbits, out, lut, lut_bits, first, cnt, offset, sorted_syms, max_len):
    """Decode ``out.size`` symbols; returns the bits consumed, -1 on overrun, -2 on a bit
    pattern that is no codeword (possible only for incomplete codes, i.e. garbage)."""
    bitpos = np.int64(0)
    shift = 64 - lut_bits
    for i in range(out.size):
        w = peek64(words, bitpos)
        e = lut[w >> shift]
        ln = np.int64(e & 63)
        if ln != 0:
            out[i] = e >> 6
        else:
            ln = 0
            for cand in range(lut_bits + 1, max_len + 1):
                d = np.int64(w >> (64 - cand)) - first[cand]
                if d >= 0 and d < cnt[cand]:
                    out[i] = sorted_syms[offset[cand] + d]
                    ln = cand
                    break
            if ln == 0:
                return -2
        bitpos += ln
        if bitpos > nbits:
            return -1
    return bitpos


def _as_symbols(symbols: np.ndarray) -> np.ndarray:
    arr = np.asarray(symbols)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise InvalidOption(f"symbols must be integers, got dtype {arr.dtype}")
    arr = arr.reshape(-1)
    if arr.dtype == np.uint64:
        if arr.size and arr.max() >= MAX_ALPHABET:
            raise InvalidOption(f"symbol {int(arr.max())} exceeds the limit {MAX_ALPHABET}")
        arr = arr.astype(np.int64)
    return np.ascontiguousarray(arr)


def _tables(lens: np.ndarray, error: type[Exception]):
    ok, codes, first, cnt, offset, sorted_syms, lut, max_len = _canonical(lens, LUT_BITS)
    if not ok:
        raise error("code lengths violate Kraft's inequality (not a prefix code)")
    return codes, first, cnt, offset, sorted_syms, lut, int(max_len)


def _out_dtype(alphabet: int) -> np.dtype:
    """The narrowest integer dtype that holds every symbol: decoded streams of small
    alphabets (k-means indices) cost 1–2 bytes per symbol, not 4."""
    if alphabet <= 1 << 8:
        return np.dtype(np.uint8)
    if alphabet <= 1 << 16:
        return np.dtype(np.uint16)
    return np.dtype(np.int32) if alphabet <= np.iinfo(np.int32).max else np.dtype(np.int64)


@njit(cache=True)
def _count_kernel(symbols, counts):
    for s in symbols:
        counts[s] += 1


def symbol_counts(symbols: np.ndarray, minlength: int = 0) -> np.ndarray:
    """``np.bincount`` without its int64 copy of the input (8 bytes per symbol)."""
    arr = _as_symbols(symbols)
    if arr.size and arr.min() < 0:
        raise InvalidOption(f"symbols must be non-negative, got {int(arr.min())}")
    size = max(int(arr.max()) + 1 if arr.size else 0, minlength)
    counts = np.zeros(size, dtype=np.int64)
    _count_kernel(arr, counts)
    return counts


def encode(symbols: np.ndarray, lengths: np.ndarray) -> bytes:
    """Huffman bits of ``symbols`` (any integer array, flattened) under the code ``lengths``.

    Returns ceil(Σ ℓ / 8) bytes, MSB-first; empty for the one-symbol code.
    """
    lens = _as_lengths(lengths)
    arr = _as_symbols(symbols)
    if arr.size == 0:
        return b""
    sole = _sole_symbol(lens)
    if sole >= 0:
        bad = np.flatnonzero(arr != sole)
        if bad.size:
            raise InvalidOption(f"symbol {int(arr[bad[0]])} has no code (one-symbol code {sole})")
        return b""
    codes = _tables(lens, InvalidOption)[0]
    total = int(_count_bits(arr, lens))
    if total < 0:
        i = -1 - total
        raise InvalidOption(f"symbol {int(arr[i])} at index {i} has no code in the table")
    words = alloc_words(total)
    _encode_kernel(arr, codes, lens, words)
    return words_to_bytes(words, total)


def decode(data: bytes | bytearray | memoryview, count: int, lengths: np.ndarray) -> np.ndarray:
    """Inverse of ``encode``: ``count`` symbols (uint8/uint16/int32/int64: the narrowest
    dtype that holds the alphabet).

    ``data`` must be exactly the encoder's bytes; a stream that ends early, runs on, holds
    a pattern that is no codeword, or has non-zero padding raises CorruptPayload.
    """
    lens = _as_lengths(lengths)
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
        raise InvalidOption(f"count must be a non-negative integer, got {count!r}")
    count = int(count)
    words, nbits = bytes_to_words(data)
    dtype = _out_dtype(lens.size)
    sole = _sole_symbol(lens)
    if count == 0 or sole >= 0 or not lens.any():
        if nbits:
            raise CorruptPayload(
                f"Huffman payload has {nbits // 8} bytes where the code spends 0 bits"
            )
        if count and sole < 0:
            raise CorruptPayload(f"empty Huffman code cannot produce {count} symbols")
        return np.full(count, max(sole, 0), dtype=dtype)
    _, first, cnt, offset, sorted_syms, lut, max_len = _tables(lens, CorruptPayload)
    min_len = int(lens[lens > 0].min())
    if count * min_len > nbits:
        raise CorruptPayload(
            f"Huffman payload of {nbits // 8} bytes cannot hold {count} symbols"
        )
    out = np.empty(count, dtype=dtype)
    used = int(
        _decode_kernel(words, nbits, out, lut, LUT_BITS, first, cnt, offset, sorted_syms, max_len)
    )
    if used == -1:
        raise CorruptPayload(f"Huffman payload truncated: {count} symbols need more than "
                             f"{nbits // 8} bytes")
    if used == -2:
        raise CorruptPayload("Huffman payload holds a bit pattern that is no codeword")
    if (used + 7) // 8 != nbits // 8:
        raise CorruptPayload(
            f"Huffman payload has {nbits // 8} bytes, but its {count} symbols use "
            f"{(used + 7) // 8}"
        )
    if used % 8 and int(peek64(words, used)) != 0:
        raise CorruptPayload("Huffman payload has non-zero padding bits")
    return out


# ----------------------------------------------------------------------------- the table

# Nibble tokens of a packed length table (lengths in symbol order, ``prev`` = last non-zero
# length, initially 8):
#   0           run of zeros, followed by a nibble-varint (run − 1)
#   1 .. 13     one length: prev + (token − 7)
#   14          one length, absolute: two nibbles (high, low)
#   15          run of lengths equal to prev, followed by a nibble-varint (run − 3)
# A nibble-varint carries 3 bits per nibble, low groups first; the top bit means "more".
_ZERO_RUN, _ESCAPE, _REPEAT, _DELTA0, _PREV0 = 0, 14, 15, 7, 8


@njit(cache=True)
def _put_varnib(nib, n, v):
    while True:
        g = v & 7
        v >>= 3
        if v:
            nib[n] = g | 8
            n += 1
        else:
            nib[n] = g
            return n + 1


@njit(cache=True)
def _pack_kernel(lengths):
    a = lengths.size
    nib = np.zeros(3 * a + 64, np.uint8)  # worst case: 3 nibbles per symbol
    n = 0
    prev = _PREV0
    i = 0
    while i < a:
        ln = np.int64(lengths[i])
        j = i + 1
        while j < a and lengths[j] == ln:
            j += 1
        run = j - i
        if ln == 0:
            nib[n] = _ZERO_RUN
            n = _put_varnib(nib, n + 1, run - 1)
            i = j
            continue
        if ln != prev:
            d = ln - prev
            if -6 <= d <= 6:
                nib[n] = d + _DELTA0
                n += 1
            else:
                nib[n] = _ESCAPE
                nib[n + 1] = ln >> 4
                nib[n + 2] = ln & 15
                n += 3
            prev = ln
            run -= 1
        if run >= 3:
            nib[n] = _REPEAT
            n = _put_varnib(nib, n + 1, run - 3)
        else:
            for _ in range(run):
                nib[n] = _DELTA0
                n += 1
        i = j
    return nib[:n]


@njit(cache=True)
def _nibble(buf, start, n):
    """Nibble ``n`` of the bytes from ``start`` (high nibble first)."""
    byte = np.int64(buf[start + (n >> 1)])
    return (byte >> 4) if (n & 1) == 0 else (byte & 15)


@njit(cache=True)
def _get_varnib(buf, start, end, n):
    """Read a nibble-varint at nibble ``n``; returns (value, next nibble) or (-1, ·)."""
    v = np.int64(0)
    shift = 0
    while True:
        if start + (n >> 1) >= end or shift > 30:
            return -1, n
        g = _nibble(buf, start, n)
        n += 1
        v |= (g & 7) << shift
        shift += 3
        if g < 8:
            return v, n


@njit(cache=True)
def _unpack_kernel(buf, start, end, out):
    """Fill ``out`` from the nibbles at buf[start:end]; returns nibbles read or -1 if bad."""
    a = out.size
    n = 0
    i = 0
    prev = _PREV0
    while i < a:
        if start + (n >> 1) >= end:
            return -1
        t = _nibble(buf, start, n)
        n += 1
        if t == _ZERO_RUN or t == _REPEAT:
            v, n = _get_varnib(buf, start, end, n)
            if v < 0:
                return -1
            run = v + 1 if t == _ZERO_RUN else v + 3
            if run > a - i:
                return -1
            val = 0 if t == _ZERO_RUN else prev
            for k in range(i, i + run):
                out[k] = val
            i += run
            continue
        if t == _ESCAPE:
            if start + ((n + 1) >> 1) >= end:
                return -1
            ln = (_nibble(buf, start, n) << 4) | _nibble(buf, start, n + 1)
            n += 2
        else:
            ln = prev + t - _DELTA0
        if ln < 1 or ln > MAX_CODE_LEN:
            return -1
        out[i] = ln
        prev = ln
        i += 1
    return n


def pack_lengths(lengths: np.ndarray) -> bytes:
    """Compact serialization of a code-length table: varint alphabet size, then nibble tokens.

    Typical cost: half a byte per used symbol whose length differs by at most 6 from the
    previous one, a few nibbles per run of unused symbols or of equal lengths.
    """
    lens = _as_lengths(lengths)
    nib = _pack_kernel(lens)
    if nib.size % 2:
        nib = np.append(nib, np.uint8(0))
    packed = ((nib[0::2] << 4) | nib[1::2]).astype(np.uint8)
    return write_varint(lens.size) + packed.tobytes()


def unpack_lengths(buf: bytes | bytearray | memoryview, offset: int = 0) -> tuple[np.ndarray, int]:
    """Read a table written by ``pack_lengths`` at ``offset``; returns (lengths, next offset).

    Raises CorruptPayload on a truncated or inconsistent table (including one that violates
    Kraft's inequality, which no prefix code can have).
    """
    raw = np.frombuffer(buf, dtype=np.uint8)
    if not 0 <= offset <= raw.size:
        raise CorruptPayload(f"code table offset {offset} outside a {raw.size}-byte buffer")
    a, pos = read_varint(buf, offset)
    if a > MAX_ALPHABET:
        raise CorruptPayload(f"code table claims {a} symbols (limit {MAX_ALPHABET})")
    # every nibble yields at least one entry and a zero run at most 8^k entries for k nibbles,
    # so a stays bounded by the limit above; allocation is at most MAX_ALPHABET bytes
    lengths = np.zeros(a, dtype=np.uint8)
    if a == 0:
        return lengths, pos
    n = int(_unpack_kernel(raw, pos, raw.size, lengths))
    if n < 0:
        raise CorruptPayload("code table is truncated or malformed")
    if _sole_symbol(lengths) < 0 and not _canonical(lengths, 1)[0]:
        raise CorruptPayload("code table violates Kraft's inequality")
    return lengths, pos + (n + 1) // 2


# ----------------------------------------------------------------------------- self-contained


def encode_symbols(symbols: np.ndarray, max_len: int = 24) -> bytes:
    """Self-contained Huffman stream: varint count, packed code table, then the bits.

    The alphabet is 0 .. max(symbols); the code is ``code_lengths`` of the symbol counts.
    """
    arr = _as_symbols(symbols)
    if arr.size and arr.min() < 0:
        raise InvalidOption(f"symbols must be non-negative, got {int(arr.min())}")
    if arr.size and arr.max() >= MAX_ALPHABET:
        raise InvalidOption(f"symbol {int(arr.max())} exceeds the limit {MAX_ALPHABET}")
    counts = symbol_counts(arr)
    lens = code_lengths(counts, max_len)
    return write_varint(arr.size) + pack_lengths(lens) + encode(arr, lens)


def decode_symbols(
    data: bytes | bytearray | memoryview, count: int | None = None
) -> np.ndarray:
    """Inverse of ``encode_symbols``. ``count``, if given, must match the stored count.

    Pass ``count`` when the stream comes from an untrusted source and its code may have a
    single symbol: such a stream has no bits that bound the count it claims.
    """
    mv = memoryview(data).cast("B")
    n, pos = read_varint(mv, 0)
    if count is not None and n != count:
        raise CorruptPayload(f"Huffman stream holds {n} symbols, expected {count}")
    lens, pos = unpack_lengths(mv, pos)
    if count is None and n > MAX_UNCHECKED_COUNT and _sole_symbol(lens) >= 0:
        raise CorruptPayload(
            f"one-symbol Huffman stream claims {n} symbols; pass the expected count"
        )
    return decode(mv[pos:], n, lens)
