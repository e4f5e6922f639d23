"""Bit ledger: what every exchange cost, against what dense training would have cost.

Three counts per step and direction ("up" = what one worker hands to the network,
"down" = what a server broadcasts / a client downloads in the federated simulator):

* ``dense_bits``  — 32·N for the N float32 values dense all-reduce would exchange that step
  (recorded every training step, also on steps without communication, so that
  ratio = Σ dense / Σ sent is the SPEC's 32·n / (p·b̄) for delay n);
* ``golomb_bits`` — the exact information bits of the packets (Golomb positions, means,
  signs, dense slots, counts), before any byte padding;
* ``sent_bytes``  — bytes actually handed to the collective, including the length exchange,
  padding to the longest worker's packet, and handshakes.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

__all__ = ["BitLedger"]

_FIELDS = ("dense_bits", "golomb_bits", "sent_bytes")


class BitLedger:
    """Per-step and total bit counts, per direction."""

    def __init__(self) -> None:
        self._steps: dict[str, dict[int, dict[str, int]]] = defaultdict(dict)

    def record(
        self,
        step: int,
        *,
        direction: str = "up",
        dense_bits: int = 0,
        golomb_bits: int = 0,
        sent_bytes: int = 0,
    ) -> None:
        """Add counts to ``step`` (several records of one step add up)."""
        row = self._steps[direction].setdefault(int(step), dict.fromkeys(_FIELDS, 0))
        row["dense_bits"] += int(dense_bits)
        row["golomb_bits"] += int(golomb_bits)
        row["sent_bytes"] += int(sent_bytes)

    def directions(self) -> list[str]:
        return sorted(self._steps)

    def per_step(self, direction: str = "up") -> list[dict[str, int]]:
        """Rows ``{"step", "dense_bits", "golomb_bits", "sent_bytes"}`` in step order."""
        rows = self._steps.get(direction, {})
        return [{"step": s, **rows[s]} for s in sorted(rows)]

    def totals(self, direction: str = "up") -> dict[str, float]:
        """Sums and the two compression ratios (dense / Golomb bits, dense / sent bits)."""
        rows = self._steps.get(direction, {}).values()
        tot = {f: sum(r[f] for r in rows) for f in _FIELDS}
        sent_bits = 8 * tot["sent_bytes"]
        tot["ratio_golomb"] = tot["dense_bits"] / tot["golomb_bits"] if tot["golomb_bits"] else 0.0
        tot["ratio_sent"] = tot["dense_bits"] / sent_bits if sent_bits else 0.0
        tot["steps"] = len(self._steps.get(direction, {}))
        return tot

    def combined(self) -> dict[str, float]:
        """Totals over all directions (up + down)."""
        tot = {f: 0 for f in _FIELDS}
        for d in self._steps:
            t = self.totals(d)
            for f in _FIELDS:
                tot[f] += t[f]
        sent_bits = 8 * tot["sent_bytes"]
        tot["ratio_golomb"] = tot["dense_bits"] / tot["golomb_bits"] if tot["golomb_bits"] else 0.0
        tot["ratio_sent"] = tot["dense_bits"] / sent_bits if sent_bits else 0.0
        return tot

    def summary(self) -> str:
        """A short human-readable table."""
        lines = [f"{'direction':<10}{'dense MB':>12}{'golomb MB':>12}{'sent MB':>12}"
                 f"{'x golomb':>11}{'x sent':>11}"]
        for d in self.directions():
            t = self.totals(d)
            lines.append(
                f"{d:<10}{t['dense_bits'] / 8e6:>12.3f}{t['golomb_bits'] / 8e6:>12.4f}"
                f"{t['sent_bytes'] / 1e6:>12.4f}{t['ratio_golomb']:>11.1f}{t['ratio_sent']:>11.1f}"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {d: {"totals": self.totals(d), "per_step": self.per_step(d)}
                for d in self.directions()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def state_dict(self) -> dict[str, Any]:
        return {d: {s: dict(r) for s, r in rows.items()} for d, rows in self._steps.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._steps = defaultdict(dict)
        for d, rows in state.items():
            self._steps[d] = {int(s): {f: int(r[f]) for f in _FIELDS} for s, r in rows.items()}
