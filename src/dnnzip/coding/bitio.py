"""Bit packing shared by the coders: MSB-first bits held in 64-bit words.

Why words: the coders write and read whole 64-bit words (one store per 64 bits, one or two
loads per symbol) instead of looping over bits. A bit stream of ``nbits`` bits is the
big-endian byte string of its words, truncated to ceil(nbits / 8) bytes, so the byte form is
exactly "bit i is bit 7 - i % 8 of byte i // 8" (MSB-first).

Writer (callable from other ``@njit`` functions; the state is three scalars passed along)::

    words = alloc_words(total_bits)
    wpos, acc, nacc = 0, np.uint64(0), 0
    wpos, acc, nacc = put_bits(words, wpos, acc, nacc, value, nbits)   # repeatedly
    nwords = flush_bits(words, wpos, acc, nacc)
    data = words_to_bytes(words, total_bits)

Reader: ``words, nbits = bytes_to_words(data)``; ``peek64(words, bitpos)`` returns the next 64
bits at any bit position and reads zeros past the end (it never indexes outside ``words``).
A decoder advances ``bitpos`` itself and reports overrun (``bitpos > nbits``) through its
return value, so a truncated stream is detected rather than read past.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numba.cpython.unsafe.numbers import leading_zeros

from ..codec import CorruptPayload, InvalidOption

__all__ = [
    "alloc_words",
    "bytes_to_words",
    "clz64",
    "flush_bits",
    "peek64",
    "put_bits",
    "read_varint",
    "words_to_bytes",
    "write_varint",
]


@njit(cache=True)
def put_bits(words, wpos, acc, nacc, value, nbits):
    """Append the low ``nbits`` (0..63) bits of ``value``, MSB first.

    ``acc`` holds the ``nacc`` (0..63) pending bits in its low end; when 64 bits are pending
    the word is stored at ``words[wpos]``. Returns the new ``(wpos, acc, nacc)``. ``value``
    must be < 2**nbits.
    """
    v = np.uint64(value)
    free = 64 - nacc
    if nbits < free:
        return wpos, (acc << nbits) | v, nacc + nbits
    # here nacc >= 1, so 1 <= free <= 63 and 0 <= rest <= 62
    rest = nbits - free
    words[wpos] = (acc << free) | (v >> rest)
    return wpos + 1, v & ((np.uint64(1) << rest) - np.uint64(1)), rest


@njit(cache=True)
def flush_bits(words, wpos, acc, nacc):
    """Store the pending bits left-aligned (zero padded); returns the number of words used."""
    if nacc > 0:
        words[wpos] = acc << (64 - nacc)
        return wpos + 1
    return wpos


@njit(cache=True)
def peek64(words, bitpos):
    """The 64 bits starting at bit ``bitpos`` (MSB-first); bits past the end read as 0."""
    i = bitpos >> 6
    s = bitpos & 63
    n = words.size
    hi = words[i] if i < n else np.uint64(0)
    if s == 0:
        return hi
    lo = words[i + 1] if i + 1 < n else np.uint64(0)
    return (hi << s) | (lo >> (64 - s))


@njit(cache=True)
def clz64(x):
    """Number of leading zero bits of a uint64 (64 for 0): the length of a unary run of zeros."""
    return np.int64(leading_zeros(np.uint64(x)))


def alloc_words(nbits: int) -> np.ndarray:
    """A word buffer for a stream of ``nbits`` bits (one spare word, so flushing is always safe)."""
    return np.zeros((int(nbits) + 63) // 64 + 1, dtype=np.uint64)


def words_to_bytes(words: np.ndarray, nbits: int) -> bytes:
    """The MSB-first byte string of the first ``nbits`` bits of ``words``."""
    nbytes = (int(nbits) + 7) // 8
    nwords = (nbytes + 7) // 8
    return words[:nwords].astype(">u8").tobytes()[:nbytes]


def bytes_to_words(data: bytes | bytearray | memoryview | np.ndarray) -> tuple[np.ndarray, int]:
    """Native uint64 words of an MSB-first byte string (zero padded) and its length in bits."""
    raw = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    raw = raw.reshape(-1).view(np.uint8)
    nbytes = raw.size
    padded = np.zeros(((nbytes + 7) // 8) * 8, dtype=np.uint8)
    padded[:nbytes] = raw
    return padded.view(">u8").astype(np.uint64), 8 * nbytes


def write_varint(value: int) -> bytes:
    """LEB128 encoding of a non-negative integer (7 bits per byte, low groups first)."""
    value = int(value)
    if value < 0:
        raise InvalidOption(f"varint must be non-negative, got {value}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def read_varint(buf: bytes | memoryview, offset: int, max_bytes: int = 10) -> tuple[int, int]:
    """Decode a LEB128 integer at ``offset``; returns ``(value, next_offset)``.

    Raises ``CorruptPayload`` when the buffer ends inside the integer or it is longer than
    ``max_bytes`` bytes.
    """
    mv = memoryview(buf)
    value = 0
    for i in range(max_bytes):
        if offset + i >= len(mv):
            raise CorruptPayload(f"truncated varint at byte {offset}")
        byte = mv[offset + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, offset + i + 1
    raise CorruptPayload(f"varint at byte {offset} is longer than {max_bytes} bytes")
