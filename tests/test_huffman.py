"""Canonical Huffman: code design, bit-exact round trips, table packing, bad input."""

from __future__ import annotations

import heapq

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dnnzip.codec import CorruptPayload, InvalidOption
from dnnzip.coding.bitio import read_varint, write_varint
from dnnzip.coding.huffman import (
    LUT_BITS,
    MAX_CODE_LEN,
    code_lengths,
    coded_bits,
    decode,
    decode_symbols,
    encode,
    encode_symbols,
    entropy_bits,
    pack_lengths,
    symbol_counts,
    unpack_lengths,
)

FAST = settings(max_examples=120, deadline=None)


def reference_huffman_cost(counts) -> int:
    """Optimal prefix-code cost: the sum of all merged weights of a Huffman tree."""
    heap = [int(c) for c in counts if c > 0]
    if len(heap) < 2:
        return 0
    heapq.heapify(heap)
    cost = 0
    while len(heap) > 1:
        merged = heapq.heappop(heap) + heapq.heappop(heap)
        cost += merged
        heapq.heappush(heap, merged)
    return cost


def kraft(lengths) -> float:
    used = lengths[lengths > 0].astype(np.float64)
    return float(np.sum(2.0**-used))


# ----------------------------------------------------------------------------- code design


def test_known_code_and_bits():
    lengths = code_lengths(np.array([5, 3, 1, 1]))
    assert lengths.dtype == np.uint8
    assert lengths.tolist() == [1, 2, 3, 3]
    # canonical codewords 0, 10, 110, 111 -> 0 10 110 111 + 7 padding bits
    data = encode(np.array([0, 1, 2, 3]), lengths)
    assert data == bytes([0b01011011, 0b10000000])
    assert decode(data, 4, lengths).tolist() == [0, 1, 2, 3]


@FAST
@given(hnp.arrays(np.int64, st.integers(2, 300), elements=st.integers(0, 10_000)))
def test_lengths_are_optimal_and_complete(counts):
    lengths = code_lengths(counts, max_len=MAX_CODE_LEN)
    assert lengths.shape == counts.shape
    assert np.array_equal(lengths > 0, counts > 0)
    used = int(np.count_nonzero(counts))
    if used >= 2:
        assert kraft(lengths) == 1.0
        assert coded_bits(counts, lengths) == reference_huffman_cost(counts)
        n = int(counts.sum())
        assert entropy_bits(counts) <= coded_bits(counts, lengths) + 1e-6 * n
        assert coded_bits(counts, lengths) < entropy_bits(counts) + n


def test_length_limit_is_hit_and_respected():
    counts = np.array([1, 1] + [int(x) for x in np.cumprod([1] + [2] * 38)], dtype=np.int64)
    # the unconstrained Huffman tree is about 40 deep: every limit below is hit
    optimum = reference_huffman_cost(counts)
    for max_len in (6, 12, 24, MAX_CODE_LEN):
        lengths = code_lengths(counts, max_len=max_len)
        assert lengths.max() == max_len
        assert kraft(lengths) == 1.0
        assert coded_bits(counts, lengths) >= optimum
        symbols = np.repeat(np.arange(counts.size), np.minimum(counts, 50))
        np.testing.assert_array_equal(
            decode(encode(symbols, lengths), symbols.size, lengths), symbols
        )
    with pytest.raises(InvalidOption, match="cannot get distinct codes"):
        code_lengths(counts, max_len=5)  # 41 symbols need at least 6 bits


@FAST
@given(
    hnp.arrays(np.int64, st.integers(2, 200), elements=st.integers(0, 2**40)),
    st.integers(8, 16),
)
def test_limited_lengths_on_skewed_counts(counts, max_len):
    if np.count_nonzero(counts) > 2**max_len:
        return
    lengths = code_lengths(counts, max_len=max_len)
    assert lengths.max() <= max_len
    if np.count_nonzero(counts) >= 2:
        assert kraft(lengths) == 1.0


def test_degenerate_tables():
    assert code_lengths(np.zeros(0, np.int64)).size == 0
    assert code_lengths(np.zeros(5, np.int64)).tolist() == [0] * 5
    one = code_lengths(np.array([0, 0, 9, 0]))
    assert one.tolist() == [0, 0, 1, 0]  # sole symbol marked, costs 0 bits
    assert coded_bits(np.array([0, 0, 9, 0]), one) == 0
    assert encode(np.full(1000, 2), one) == b""
    out = decode(b"", 1000, one)
    assert out.dtype == np.uint8 and np.all(out == 2) and out.size == 1000  # alphabet 4
    with pytest.raises(InvalidOption, match="no code"):
        encode(np.array([2, 1]), one)
    with pytest.raises(CorruptPayload):
        decode(b"\x00", 3, one)
    with pytest.raises(CorruptPayload, match="empty Huffman code"):
        decode(b"", 3, np.zeros(4, np.uint8))
    assert decode(b"", 0, np.zeros(4, np.uint8)).size == 0


def test_entropy_bits():
    assert entropy_bits(np.array([4, 4])) == pytest.approx(8.0)
    assert entropy_bits(np.array([0, 7])) == 0.0
    assert entropy_bits(np.array([1, 1, 2])) == pytest.approx(6.0)
    assert entropy_bits(np.zeros(0)) == 0.0


# ----------------------------------------------------------------------------- round trips


symbol_streams = st.one_of(
    hnp.arrays(np.int64, st.integers(0, 2000), elements=st.integers(0, 40)),
    hnp.arrays(np.int32, st.integers(0, 500), elements=st.integers(0, (1 << 20) - 1)),
    hnp.arrays(np.uint8, st.integers(0, 500), elements=st.integers(0, 255)),
    st.integers(0, 3000).map(lambda n: np.full(n, 123_456, dtype=np.int64)),  # all equal
)


@FAST
@given(symbol_streams)
def test_self_contained_round_trip(symbols):
    data = encode_symbols(symbols)
    out = decode_symbols(data)
    alphabet = int(symbols.max()) + 1 if symbols.size else 0
    assert out.dtype == (
        np.uint8 if alphabet <= 256 else np.uint16 if alphabet <= 65536 else np.int32
    )
    np.testing.assert_array_equal(out, symbols.astype(np.int64))
    np.testing.assert_array_equal(decode_symbols(data, count=symbols.size), out)


@FAST
@given(symbol_streams, st.integers(0, 1000), st.integers(1, MAX_CODE_LEN))
def test_explicit_table_round_trip(symbols, extra, max_len):
    top = int(symbols.max()) + 1 if symbols.size else 1
    counts = np.bincount(symbols.astype(np.int64), minlength=top + extra)
    if np.count_nonzero(counts) > 2**max_len:
        return
    lengths = code_lengths(counts, max_len=max_len)
    data = encode(symbols, lengths)
    nbits = coded_bits(counts, lengths)
    assert len(data) == (nbits + 7) // 8
    np.testing.assert_array_equal(decode(data, symbols.size, lengths), symbols)


def test_long_codes_take_the_slow_path():
    # lengths beyond LUT_BITS: the canonical slow path must agree with the table
    counts = np.array([int(x) for x in np.cumprod([1] + [2] * 24)] + [1], dtype=np.int64)
    lengths = code_lengths(counts, max_len=MAX_CODE_LEN)
    assert lengths.max() > LUT_BITS
    rng = np.random.default_rng(0)
    symbols = rng.integers(0, counts.size, size=20_000)
    np.testing.assert_array_equal(decode(encode(symbols, lengths), symbols.size, lengths), symbols)


def test_larger_stream_matches_entropy():
    rng = np.random.default_rng(1)
    symbols = (rng.geometric(0.05, size=1_000_000) - 1).astype(np.int32)
    counts = np.bincount(symbols)
    lengths = code_lengths(counts)
    data = encode(symbols, lengths)
    bits = 8 * len(data)
    assert entropy_bits(counts) <= bits < entropy_bits(counts) + 0.05 * symbols.size
    np.testing.assert_array_equal(decode(data, symbols.size, lengths), symbols)
    whole = encode_symbols(symbols)
    assert len(whole) < len(data) + 300  # table + count cost a few hundred bytes at most


# ----------------------------------------------------------------------------- the table


@FAST
@given(
    hnp.arrays(np.int64, st.integers(0, 3000), elements=st.integers(0, 1000)),
    st.binary(max_size=5),
    st.binary(max_size=5),
)
def test_pack_unpack_round_trip(counts, prefix, suffix):
    lengths = code_lengths(counts)
    packed = pack_lengths(lengths)
    out, end = unpack_lengths(prefix + packed + suffix, len(prefix))
    assert end == len(prefix) + len(packed)
    np.testing.assert_array_equal(out, lengths)


def test_pack_is_compact():
    rng = np.random.default_rng(2)
    lengths = code_lengths(rng.integers(1, 100, size=256))
    assert len(pack_lengths(lengths)) <= 2 + 256 // 2 + 8
    sparse = np.zeros(1 << 20, np.int64)
    sparse[[3, 70_000, 999_999]] = [5, 1, 1]
    assert len(pack_lengths(code_lengths(sparse))) <= 20


def test_unpack_rejects_kraft_violation_and_garbage():
    with pytest.raises(CorruptPayload, match="Kraft"):
        unpack_lengths(pack_lengths(np.array([1, 1, 1], np.uint8)))
    with pytest.raises(CorruptPayload):
        unpack_lengths(write_varint(1 << 25))  # alphabet beyond the limit
    with pytest.raises(CorruptPayload):
        unpack_lengths(write_varint(100))  # no tokens
    with pytest.raises(CorruptPayload):
        unpack_lengths(b"\xff\xff\xff")  # truncated varint
    with pytest.raises(CorruptPayload):
        unpack_lengths(b"\x01\x00", offset=5)


@FAST
@given(st.binary(max_size=40))
def test_unpack_garbage_never_crashes(data):
    try:
        lengths, end = unpack_lengths(data)
    except CorruptPayload:
        return
    assert end <= len(data)
    assert lengths.size == read_varint(data, 0)[0]
    assert lengths.max(initial=0) <= MAX_CODE_LEN


# ----------------------------------------------------------------------------- bad input


def test_truncated_and_extended_payloads():
    rng = np.random.default_rng(4)
    symbols = rng.integers(0, 50, size=5000)
    lengths = code_lengths(np.bincount(symbols))
    data = encode(symbols, lengths)
    for cut in (0, 1, len(data) // 2, len(data) - 1):
        with pytest.raises(CorruptPayload):
            decode(data[:cut], symbols.size, lengths)
    with pytest.raises(CorruptPayload):
        decode(data + b"\x00", symbols.size, lengths)
    with pytest.raises(CorruptPayload):
        decode(data, 10**12, lengths)  # a count the payload cannot hold
    whole = encode_symbols(symbols)
    for cut in (1, 5, len(whole) - 1):
        with pytest.raises(CorruptPayload):
            decode_symbols(whole[:cut])
    with pytest.raises(CorruptPayload, match="expected"):
        decode_symbols(whole, count=symbols.size + 1)


def test_incomplete_code_rejects_unknown_pattern():
    lengths = np.array([1, 2], np.uint8)  # codewords 0, 10; "11" is no codeword
    assert decode(bytes([0b01000000]), 2, lengths).tolist() == [0, 1]
    with pytest.raises(CorruptPayload, match="no codeword"):
        decode(bytes([0b11000000]), 1, lengths)
    with pytest.raises(CorruptPayload, match="padding"):
        decode(bytes([0b01000001]), 2, lengths)


def test_one_symbol_stream_with_untrusted_count():
    forged = write_varint(1 << 40) + pack_lengths(np.array([0, 1], np.uint8))
    with pytest.raises(CorruptPayload, match="expected count"):
        decode_symbols(forged)
    with pytest.raises(CorruptPayload):
        decode_symbols(forged, count=7)


@FAST
@given(st.binary(max_size=80), st.integers(0, 200))
def test_garbage_never_crashes(data, count):
    try:
        out = decode_symbols(data)
    except CorruptPayload:
        pass
    else:
        assert out.size == read_varint(data, 0)[0] and out.min(initial=0) >= 0
    lengths = code_lengths(np.array([7, 1, 0, 3, 3, 9, 1, 1]))
    try:
        out = decode(data, count, lengths)
    except CorruptPayload:
        return
    assert out.size == count and out.min(initial=0) >= 0 and out.max(initial=0) < 8
    assert encode(out, lengths) == data


@pytest.mark.parametrize(
    "counts,max_len",
    [
        (np.array([1, -1]), 24),
        (np.array([1.5, 2.0]), 24),
        (np.ones((2, 2), np.int64), 24),
        (np.ones(4, np.int64), 0),
        (np.ones(4, np.int64), MAX_CODE_LEN + 1),
        (np.ones(4, np.int64), 3.0),
    ],
)
def test_bad_code_options(counts, max_len):
    with pytest.raises(InvalidOption):
        code_lengths(counts, max_len)


def test_bad_symbols_and_tables():
    lengths = code_lengths(np.array([3, 3, 0, 2]))
    for bad in (np.array([0, 2]), np.array([-1]), np.array([4]), np.array([0.0, 1.0])):
        with pytest.raises(InvalidOption):
            encode(bad, lengths)
    with pytest.raises(InvalidOption, match="Kraft"):
        encode(np.array([0, 1]), np.array([1, 1, 1], np.uint8))
    with pytest.raises(InvalidOption):
        encode(np.array([0]), np.array([40, 1], np.int64))
    with pytest.raises(InvalidOption):
        decode(b"", -1, lengths)
    with pytest.raises(InvalidOption):
        encode_symbols(np.array([-3, 1]))
    with pytest.raises(InvalidOption):
        coded_bits(np.array([1, 1, 1, 0]), lengths)  # symbol 2 has no code


@FAST
@given(symbol_streams)
def test_symbol_counts_match_bincount(symbols):
    np.testing.assert_array_equal(
        symbol_counts(symbols, minlength=3), np.bincount(symbols.astype(np.int64), minlength=3)
    )
