"""Model I/O: safetensors, .pt state_dicts, HF folders; streamed safetensors writer."""

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dnnzip.codec import DnnzipError
from dnnzip.io import ModelReadError, open_model, write_safetensors
from dnnzip.io.tensors import numpy_to_torch, storage_array


def assert_same(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def test_reads_safetensors(model_file, state_dict):
    src = open_model(model_file)
    assert sorted(src.names) == sorted(state_dict)
    for name, t in state_dict.items():
        assert src.shape(name) == tuple(t.shape)
        assert torch.equal(src.get(name), t)
    assert src.dtype("emb.weight") == "bfloat16"
    assert src.dtype("norm.num_batches_tracked") == "int64"


def test_reads_pt_and_checkpoint_wrappers(tmp_path, state_dict):
    plain = tmp_path / "m.pt"
    torch.save(state_dict, plain)
    assert_same(dict(open_model(plain)), state_dict)
    wrapped = tmp_path / "ckpt.pth"
    torch.save({"state_dict": state_dict, "epoch": 3}, wrapped)
    assert_same(dict(open_model(wrapped)), state_dict)


def test_reads_hf_folder_with_shards(tmp_path, state_dict):
    names = list(state_dict)
    save_file(
        {k: state_dict[k] for k in names[:4]}, str(tmp_path / "model-00001-of-00002.safetensors")
    )
    save_file(
        {k: state_dict[k] for k in names[4:]}, str(tmp_path / "model-00002-of-00002.safetensors")
    )
    (tmp_path / "config.json").write_text("{}")
    src = open_model(tmp_path)
    assert sorted(src.names) == sorted(names)
    assert torch.equal(src.get("emb.weight"), state_dict["emb.weight"])


def test_reads_module(state_dict):
    model = torch.nn.Linear(3, 2)
    src = open_model(model)
    assert src.names == ["weight", "bias"]


def test_bad_sources(tmp_path):
    with pytest.raises(ModelReadError, match="no such file"):
        open_model(tmp_path / "nope.safetensors")
    junk = tmp_path / "notes.txt"
    junk.write_text("these are not weights, just some text\n" * 10)
    with pytest.raises(ModelReadError, match="notes.txt"):
        open_model(junk)
    with pytest.raises(ModelReadError, match="no \\*.safetensors"):
        open_model(tmp_path)
    bad_pt = tmp_path / "bad.pt"
    torch.save({"w": torch.ones(2), "opt": {"lr": 0.1}}, bad_pt)
    with pytest.raises(ModelReadError, match="entry 'opt' is a dict, not a tensor"):
        open_model(bad_pt)
    listy = tmp_path / "list.pt"
    torch.save([torch.ones(2)], listy)
    with pytest.raises(ModelReadError, match="not a state_dict"):
        open_model(listy)
    with pytest.raises(DnnzipError, match="tensor 'z': unsupported dtype torch.complex64"):
        open_model({"z": torch.zeros(2, dtype=torch.complex64)})


def test_streamed_safetensors_writer_is_readable(tmp_path, state_dict):
    path = tmp_path / "out.safetensors"
    specs = [(k, tuple(v.shape), open_model(state_dict).dtype(k)) for k, v in state_dict.items()]
    write_safetensors(path, specs, lambda n: storage_array(state_dict[n]), metadata={"a": 1})
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"a": "1"}
        for k, v in state_dict.items():
            got = f.get_tensor(k)
            assert got.dtype == v.dtype and torch.equal(got, v)


def test_bfloat16_bits_survive():
    t = torch.randn(17).to(torch.bfloat16)
    back = numpy_to_torch(storage_array(t), "bfloat16")
    assert back.dtype == torch.bfloat16 and torch.equal(back, t)
    assert storage_array(t).dtype == np.uint16
