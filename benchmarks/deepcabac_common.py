"""Shared pieces of the DeepCABAC benchmarks on all-MiniLM-L6-v2.

* the model's tensors (safetensors, memory-mapped), the ones coded lossily (≥ 2-D float) and the
  ones kept as they are (1-D norms/biases, integer buffers), counted at their raw size;
* fidelity: mean cosine between sentence embeddings of the original and the restored model over
  ``dnnzip.demo.SENTENCES`` (the lead's fixed list), and the weight SNR;
* calibration text for the importance estimate, *disjoint* from the evaluation sentences:
  sentences from the data-set descriptions that ship with scikit-learn.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
sys.path.insert(0, str(ROOT.parent / "src"))

from machine import cpu_model  # noqa: E402

from dnnzip import demo  # noqa: E402
from dnnzip.nn.importance import output_sensitivity  # noqa: E402

#: NNCodec 2.1.3 on this model, as quoted in issue 3 (not measured by us)
NNCODEC_QUOTED = [
    {"setting": "qp -38", "ratio": 5.02, "bpw": 6.38, "cosine": 0.9991, "snr_db": 38.0,
     "encode_s": 36.8, "decode_s": 6.5},
    {"setting": "qp -32 (default)", "ratio": 6.48, "bpw": 4.94, "cosine": 0.9936, "snr_db": 29.6,
     "encode_s": 22.2, "decode_s": 3.6},
    {"setting": "qp -26", "ratio": 9.35, "bpw": 3.42, "cosine": 0.9523, "snr_db": 20.4,
     "encode_s": 17.2, "decode_s": 1.8},
    {"setting": "qp -32, no DQ", "ratio": 5.39, "bpw": 5.93, "cosine": 0.9980, "snr_db": 34.4,
     "encode_s": 19.6, "decode_s": 4.1},
]
NNCODEC_DEFAULT_MB = 14.01


def model_file() -> Path:
    return demo.minilm_path() / "model.safetensors"


def load_tensors() -> dict[str, np.ndarray]:
    from safetensors import safe_open

    with safe_open(str(model_file()), "np") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def is_lossy(a: np.ndarray) -> bool:
    return a.dtype == np.float32 and a.ndim >= 2


def n_params(tensors: dict[str, np.ndarray]) -> int:
    return int(sum(a.size for a in tensors.values()))


def kept_bytes(tensors: dict[str, np.ndarray]) -> int:
    return int(sum(a.nbytes for a in tensors.values() if not is_lossy(a)))


def weight_snr(tensors: dict[str, np.ndarray], restored: dict[str, np.ndarray]) -> float:
    num = den = 0.0
    for k, a in tensors.items():
        if is_lossy(a):
            d = a.astype(np.float64) - restored[k].astype(np.float64)
            num += float(np.dot(a.ravel().astype(np.float64), a.ravel().astype(np.float64)))
            den += float(np.dot(d.ravel(), d.ravel()))
    return 10 * np.log10(num / den) if den > 0 else float("inf")


class Fidelity:
    """Embeds ``demo.SENTENCES`` with the original weights once, then scores restored ones."""

    def __init__(self) -> None:
        self.encoder = demo.load_encoder()
        self.reference = demo.embed(self.encoder)

    def cosine(self, tensors: dict[str, np.ndarray], restored: dict[str, np.ndarray]) -> float:
        state = {k: torch.from_numpy(np.ascontiguousarray(restored.get(k, a)))
                 for k, a in tensors.items()}
        return demo.embedding_cosine(self.reference, self.encoder, state)


def calibration_sentences(limit: int = 256) -> list[str]:
    """Sentences of the scikit-learn data-set descriptions (8–40 words), none of which is an
    evaluation sentence."""
    import sklearn

    folder = Path(sklearn.__file__).parent / "datasets" / "descr"
    text = " ".join(p.read_text(errors="ignore") for p in sorted(folder.glob("*.rst")))
    text = re.sub(r"[`*:|=\-_]{2,}|\.\. [a-z_]+::.*?\n|https?://\S+", " ", text)
    text = re.sub(r"\s+", " ", text)
    evaluation = set(demo.SENTENCES)
    out = []
    for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text):
        words = s.split()
        if 8 <= len(words) <= 40 and s not in evaluation and sum(c.isalpha() for c in s) > 30:
            out.append(s.strip())
        if len(out) >= limit:
            break
    return out


def sensitivity(fid: Fidelity, cache: Path | None = None, probes: int = 4
                ) -> dict[str, np.ndarray]:
    """Gauss–Newton diagonal of the normalised sentence embedding (per sentence) for every
    weight, from the calibration sentences (``dnnzip.nn.importance.output_sensitivity``)."""
    if cache is not None and cache.exists():
        with np.load(cache) as z:
            return {k: z[k] for k in z.files}
    model = fid.encoder
    sentences = calibration_sentences()
    batches = [sentences[i:i + 32] for i in range(0, len(sentences), 32)]
    # restore the original weights (the fidelity object may hold restored ones)
    tensors = load_tensors()
    inner = model[0].auto_model
    inner.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(tensors[k]))
                           for k in inner.state_dict()})

    def forward(m, batch):
        feats = m.tokenize(batch)
        return m(feats)["sentence_embedding"]

    names = [n for n, p in inner.named_parameters() if n in tensors and is_lossy(tensors[n])]
    t0 = time.time()
    with torch.enable_grad():
        by_id = {id(p): n for n, p in inner.named_parameters()}
        wrapped = {outer: by_id[id(p)] for outer, p in model.named_parameters()
                   if by_id.get(id(p)) in names}
        sens = output_sensitivity(model, forward, batches, probes=probes, names=list(wrapped))
    out = {wrapped[k]: v for k, v in sens.items()}
    for n, a in tensors.items():
        if is_lossy(a) and n not in out:
            out[n] = np.zeros_like(a)  # parameters the embedding never uses (the pooler)
    print(f"sensitivity from {len(sentences)} calibration sentences in {time.time() - t0:.1f} s")
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, **out)
    return out


def machine_load() -> dict[str, float | str]:
    """The CPU model and the load at the start of the run."""
    info: dict[str, float | str] = {"cpu_model": cpu_model(), "cpus": os.cpu_count() or 0}
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return info
    return {**info, "loadavg_1min": one, "loadavg_5min": five}
