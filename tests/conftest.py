import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file


def small_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A LeNet-ish state_dict with every kind of tensor the pipeline meets."""
    g = torch.Generator().manual_seed(seed)
    return {
        "conv1.weight": torch.randn(6, 1, 5, 5, generator=g) * 0.2,
        "conv1.bias": torch.randn(6, generator=g),
        "fc1.weight": torch.randn(120, 96, generator=g) * 0.05,
        "fc1.bias": torch.randn(120, generator=g),
        "fc2.weight": (torch.randn(10, 120, generator=g) * 0.1).to(torch.float16),
        "emb.weight": (torch.randn(50, 8, generator=g)).to(torch.bfloat16),
        "norm.weight": torch.ones(8),
        "norm.num_batches_tracked": torch.tensor(7),
    }


@pytest.fixture
def state_dict() -> dict[str, torch.Tensor]:
    return small_state_dict()


@pytest.fixture
def model_file(tmp_path: Path, state_dict) -> Path:
    path = tmp_path / "model.safetensors"
    save_file(state_dict, str(path))
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def leftovers(folder: Path) -> list[str]:
    """Temporary files a failed write might have left behind."""
    return sorted(p.name for p in Path(folder).iterdir() if p.name.endswith(".tmp"))
