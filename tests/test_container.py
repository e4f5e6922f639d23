"""The .dnnz container: round trip, random access, and every way a file can be damaged."""

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import leftovers
from hypothesis import given, settings
from hypothesis import strategies as st

from dnnzip.container import ContainerError, DnnzReader, DnnzWriter, OutputExists
from dnnzip.container.dnnz import HEADER, TRAILER
from dnnzip.methods.raw import RawCodec


def write(path: Path, tensors: dict[str, np.ndarray], force: bool = False) -> None:
    with DnnzWriter(path, {"note": "test"}, force=force) as w:
        for name, arr in tensors.items():
            codec = RawCodec(str(arr.dtype))
            w.add_payload(name, arr.shape, str(arr.dtype), codec, codec.encode(arr))


def sample() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "a": rng.standard_normal((3, 4)).astype(np.float32),
        "b": np.arange(10, dtype=np.int64),
        "c": rng.standard_normal(5).astype(np.float16),
    }


def test_round_trip_and_random_access(tmp_path):
    tensors = sample()
    path = tmp_path / "x.dnnz"
    write(path, tensors)
    with DnnzReader(path) as r:
        assert r.names == ["a", "b", "c"]
        assert r.metadata == {"note": "test"}
        np.testing.assert_array_equal(r.read("b"), tensors["b"])  # read one without others
        for name, arr in tensors.items():
            out = r.read(name)
            assert out.dtype == arr.dtype and out.shape == arr.shape
            np.testing.assert_array_equal(out, arr)


@settings(max_examples=40, deadline=None)
@given(
    shapes=st.lists(st.lists(st.integers(0, 5), min_size=0, max_size=4), min_size=1, max_size=4),
    dtype=st.sampled_from(["float32", "float16", "float64", "int8", "int64", "uint8", "bool"]),
    seed=st.integers(0, 2**31),
)
def test_round_trip_property(tmp_path_factory, shapes, dtype, seed):
    rng = np.random.default_rng(seed)
    tensors = {f"t{i}": (rng.standard_normal(s) * 100).astype(dtype) for i, s in enumerate(shapes)}
    path = tmp_path_factory.mktemp("rt") / "p.dnnz"
    write(path, tensors)
    with DnnzReader(path) as r:
        for name, arr in tensors.items():
            np.testing.assert_array_equal(r.read(name), arr)


def test_refuses_to_overwrite_without_force(tmp_path):
    path = tmp_path / "x.dnnz"
    path.write_bytes(b"precious")
    with pytest.raises(OutputExists, match="use --force"):
        write(path, sample())
    assert path.read_bytes() == b"precious"
    write(path, sample(), force=True)
    assert DnnzReader(path).names == ["a", "b", "c"]


def test_failed_write_leaves_nothing(tmp_path):
    path = tmp_path / "x.dnnz"
    with pytest.raises(RuntimeError):
        with DnnzWriter(path) as w:
            arr = np.zeros(4, np.float32)
            w.add_payload("a", arr.shape, "float32", RawCodec("float32"), arr.tobytes())
            raise RuntimeError("interrupted")
    assert not path.exists()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("cut", [1, 10, TRAILER.size, 40])
def test_truncated_file(tmp_path, cut):
    path = tmp_path / "x.dnnz"
    write(path, sample())
    data = path.read_bytes()
    path.write_bytes(data[:-cut])
    with pytest.raises(ContainerError, match="truncated|not a .dnnz"):
        DnnzReader(path)


def test_flipped_payload_byte_names_the_tensor(tmp_path):
    path = tmp_path / "x.dnnz"
    write(path, sample())
    with DnnzReader(path) as r:
        off = r.entry("b")["offset"] + 3
    data = bytearray(path.read_bytes())
    data[off] ^= 0x40
    path.write_bytes(bytes(data))
    with DnnzReader(path) as r:
        np.testing.assert_array_equal(r.read("a"), sample()["a"])  # others still readable
        with pytest.raises(ContainerError, match="tensor 'b': checksum mismatch"):
            r.read("b")


def test_flipped_index_byte(tmp_path):
    path = tmp_path / "x.dnnz"
    write(path, sample())
    data = bytearray(path.read_bytes())
    data[-TRAILER.size - 5] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ContainerError, match="index checksum"):
        DnnzReader(path)


def test_wrong_magic_and_version(tmp_path):
    path = tmp_path / "x.dnnz"
    write(path, sample())
    data = bytearray(path.read_bytes())
    bad = bytes(data)
    path.write_bytes(b"ZIPX" + bad[4:])
    with pytest.raises(ContainerError, match="bad magic"):
        DnnzReader(path)
    path.write_bytes(HEADER.pack(b"DNNZ", 9, 0) + bad[HEADER.size :])
    with pytest.raises(ContainerError, match="version 9.0 is not supported"):
        DnnzReader(path)


def _rewrite_index(path, edit, *, deflate=True, major=None):
    """Rewrite the file's index through ``edit(json_bytes) -> json_bytes`` (with a valid CRC),
    stored deflated or as plain JSON, optionally under another major version."""
    data = path.read_bytes()
    index_offset, index_len, _, end = TRAILER.unpack_from(data, len(data) - TRAILER.size)
    old = zlib.decompress(data[index_offset : index_offset + index_len])
    new = edit(old)
    stored = zlib.compress(new) if deflate else new
    head = data[:index_offset]
    if major is not None:
        head = HEADER.pack(b"DNNZ", major, 0) + head[HEADER.size :]
    path.write_bytes(head + stored + TRAILER.pack(index_offset, len(stored),
                                                  zlib.crc32(stored), end))
    return old, new


def test_index_entry_pointing_outside_the_file(tmp_path):
    """A reader never trusts a length: an entry past the index is refused upfront."""
    path = tmp_path / "x.dnnz"
    write(path, sample())
    old, new = _rewrite_index(path, lambda j: j.replace(b'"length":48', b'"length":9999'))
    assert old != new
    with pytest.raises(ContainerError, match="index entry is not valid"):
        DnnzReader(path)


def test_version_1_file_with_plain_json_index_is_read(tmp_path):
    path = tmp_path / "x.dnnz"
    write(path, sample())
    _rewrite_index(path, lambda j: j, deflate=False, major=1)
    with DnnzReader(path) as r:
        np.testing.assert_array_equal(r.read("a"), sample()["a"])


def test_index_that_inflates_past_the_limit_is_refused(tmp_path, monkeypatch):
    import dnnzip.container.dnnz as dnnz

    path = tmp_path / "x.dnnz"
    write(path, sample())
    _rewrite_index(path, lambda j: j[:-1] + b"," + b'"pad":"' + b"x" * 5000 + b'"}')
    with DnnzReader(path):
        pass  # fits under the real limit
    monkeypatch.setattr(dnnz, "MAX_INDEX_BYTES", 1000)
    with pytest.raises(ContainerError, match="too large or incomplete"):
        DnnzReader(path)


def test_index_that_is_not_a_deflate_stream_is_refused(tmp_path):
    path = tmp_path / "x.dnnz"
    write(path, sample())
    _rewrite_index(path, lambda j: j, deflate=False)  # major 2 expects deflate
    with pytest.raises(ContainerError, match="index is not valid"):
        DnnzReader(path)


def test_not_a_file(tmp_path):
    with pytest.raises(ContainerError, match="no such file"):
        DnnzReader(tmp_path / "missing.dnnz")
    with pytest.raises(ContainerError, match="directory"):
        DnnzReader(tmp_path)
    (tmp_path / "small").write_bytes(b"DNNZ")
    with pytest.raises(ContainerError, match="not a .dnnz file"):
        DnnzReader(tmp_path / "small")


def test_trailer_layout_is_fixed():
    assert HEADER.size == 8 and TRAILER.size == 24
    assert struct.calcsize("<QQI4s") == TRAILER.size
