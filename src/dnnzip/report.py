"""What a compression run reports: per tensor and in total, as a table or JSON.

For every tensor: bytes before and after, bits per weight, ratio, sparsity, distinct
values, the order-0 entropy of the quantized levels (the yardstick a symbol coder is
measured against), Huffman vs fixed-length bits, SNR and time.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .io.tensors import ITEMSIZE


@dataclass
class TensorRow:
    name: str
    shape: tuple[int, ...]
    dtype: str
    codec: str
    original_bytes: int
    compressed_bytes: int
    stats: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_entry(cls, entry: dict[str, Any]) -> TensorRow:
        shape = tuple(entry["shape"])
        return cls(
            name=entry["name"],
            shape=shape,
            dtype=entry["dtype"],
            codec=entry["codec"]["id"],
            original_bytes=math.prod(shape) * ITEMSIZE[entry["dtype"]],
            compressed_bytes=entry["length"],
            stats=dict(entry.get("stats", {})),
        )

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.compressed_bytes / self.numel if self.numel else 0.0

    @property
    def ratio(self) -> float:
        return self.original_bytes / self.compressed_bytes if self.compressed_bytes else math.inf

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["bits_per_weight"] = self.bits_per_weight
        d["ratio"] = self.ratio if math.isfinite(self.ratio) else None
        return d


@dataclass
class CompressionReport:
    path: Path
    rows: list[TensorRow]
    file_bytes: int
    seconds: float = 0.0
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def original_bytes(self) -> int:
        return sum(r.original_bytes for r in self.rows)

    @property
    def compressed_bytes(self) -> int:
        """The whole .dnnz file: payloads, index, header and trailer."""
        return self.file_bytes

    @property
    def numel(self) -> int:
        return sum(r.numel for r in self.rows)

    @property
    def float32_bytes(self) -> int:
        return 4 * self.numel

    @property
    def ratio(self) -> float:
        return self.original_bytes / self.file_bytes

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.file_bytes / self.numel

    def totals(self) -> dict[str, Any]:
        coded = [r for r in self.rows if "huffman_bits" in r.stats]
        out: dict[str, Any] = {
            "tensors": len(self.rows),
            "weights": self.numel,
            "original_bytes": self.original_bytes,
            "float32_bytes": self.float32_bytes,
            "compressed_bytes": self.file_bytes,
            "ratio": self.ratio,
            "ratio_vs_float32": self.float32_bytes / self.file_bytes,
            "bits_per_weight": self.bits_per_weight,
            "seconds": self.seconds,
        }
        if coded:
            huff = sum(r.stats["huffman_bits"] for r in coded)
            fixed = sum(r.stats["fixed_bits"] for r in coded)
            out["huffman_bits"] = huff
            out["fixed_length_bits"] = fixed
            out["huffman_saving_vs_fixed"] = 1 - huff / fixed if fixed else 0.0
            out["entropy_bits"] = sum(r.stats.get("entropy_bits", 0.0) for r in coded)
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "totals": self.totals(),
            "metadata": self.metadata,
            "tensors": [r.as_dict() for r in self.rows],
        }

    def table(self, limit: int | None = None) -> str:
        return format_table(self.rows, limit) + "\n" + format_totals(self.totals())


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} GB"


def format_table(rows: list[TensorRow], limit: int | None = None) -> str:
    head = ("tensor", "shape", "codec", "original", "stored", "bits/w", "ratio", "sparsity",
            "distinct", "SNR dB")  # fmt: skip
    lines = []
    shown = rows if limit is None or len(rows) <= limit else rows[:limit]
    for r in shown:
        s = r.stats
        snr = s.get("snr_db")
        lines.append((
            r.name if len(r.name) <= 48 else "…" + r.name[-47:],
            "×".join(map(str, r.shape)) or "scalar",
            r.codec,
            _fmt_bytes(r.original_bytes),
            _fmt_bytes(r.compressed_bytes),
            f"{r.bits_per_weight:.2f}",
            f"{r.ratio:.1f}×" if math.isfinite(r.ratio) else "-",
            f"{s['sparsity']:.1%}" if "sparsity" in s else "-",
            str(s.get("distinct", "-")),
            "-" if snr is None else f"{snr:.1f}",
        ))  # fmt: skip
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h)
              for i, h in enumerate(head)]  # fmt: skip
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    if len(shown) < len(rows):
        out.append(f"… {len(rows) - len(shown)} more tensors (--json for all)")
    return "\n".join(out)


def format_totals(t: dict[str, Any]) -> str:
    line = (
        f"total: {t['tensors']} tensors, {t['weights']:,} weights, "
        f"{_fmt_bytes(t['original_bytes'])} → {_fmt_bytes(t['compressed_bytes'])} "
        f"({t['ratio']:.2f}×, {t['bits_per_weight']:.3f} bits/weight)"
    )
    if "huffman_bits" in t:
        line += (
            f"\n       Huffman {t['huffman_bits'] / 8e3:.1f} KB vs fixed-length "
            f"{t['fixed_length_bits'] / 8e3:.1f} KB (saves {t['huffman_saving_vs_fixed']:.1%}); "
            f"order-0 entropy of the levels {t['entropy_bits'] / 8e3:.1f} KB"
        )
    if t.get("seconds"):
        line += f"\n       {t['seconds']:.2f} s"
    return line
