"""The main job on the bundled model: all-MiniLM-L6-v2 compressed ≥ 6× at cosine ≥ 0.99."""

import json

import pytest

from dnnzip.cli import main
from dnnzip.demo import SENTENCES


@pytest.mark.slow
def test_demo_reaches_issue_figures(capsys, tmp_path):
    assert len(SENTENCES) >= 50 and len(set(SENTENCES)) == len(SENTENCES)
    keep = tmp_path / "minilm.dnnz"
    assert main(["demo", "--json", "--keep-file", str(keep)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ratio"] >= 6.0
    assert result["embedding_cosine"] >= 0.99
    assert result["compressed_bytes"] == keep.stat().st_size
    assert result["huffman_saving_vs_fixed"] >= 0.2
