"""Collectives used by the hook and the averager: torch.distributed only, no own networking.

Sparse packets cannot be summed by all-reduce (positions differ per worker), so they are
all-gathered: Golomb packets as bytes (lengths first, then every packet padded to the
longest), padded fixed-k packets in one all-gather. A status travels with each packet so that a
worker with a non-finite update makes every worker take the same decision (raise or skip)
instead of leaving the others waiting. Any failure of a collective — a peer that died, the
process group's timeout — is re-raised as :class:`CommunicationError` naming the cause.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..codec import DnnzipError

__all__ = [
    "CommunicationError",
    "ConfigMismatch",
    "STATUS_NONFINITE",
    "STATUS_OK",
    "exchange_bytes",
    "exchange_words",
    "handshake",
]

STATUS_OK = 0
STATUS_NONFINITE = 1


class CommunicationError(DnnzipError, RuntimeError):
    """A collective failed: a worker died, hung past the timeout, or the group is broken."""


class ConfigMismatch(DnnzipError, ValueError):
    """Workers were started with different compression settings or models."""


def _wrap(what: str, exc: BaseException) -> CommunicationError:
    return CommunicationError(
        f"{what} failed (a worker died, timed out, or disagrees on the protocol): "
        f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    )


def _world(group) -> int:
    return dist.get_world_size(group)


def handshake(config: dict[str, Any], group=None) -> int:
    """Check that every worker runs the same ``config``; return the bytes this worker sent.

    Raises :class:`ConfigMismatch` on every worker (with each worker's config) otherwise.
    """
    blob = json.dumps(config, sort_keys=True, default=str)
    digest = int.from_bytes(hashlib.blake2b(blob.encode(), digest_size=7).digest(), "little")
    world = _world(group)
    mine = torch.tensor([digest, world], dtype=torch.int64)
    outs = [torch.zeros(2, dtype=torch.int64) for _ in range(world)]
    try:
        dist.all_gather(outs, mine, group=group)
    except Exception as exc:  # noqa: BLE001 - every backend error is reported the same way
        raise _wrap("configuration handshake", exc) from exc
    if any(int(o[0]) != digest or int(o[1]) != world for o in outs):
        configs: list[Any] = [None] * world
        try:
            dist.all_gather_object(configs, blob, group=group)
        except Exception as exc:  # noqa: BLE001
            raise _wrap("configuration handshake", exc) from exc
        raise ConfigMismatch(
            f"workers disagree on the compression configuration: {_differences(configs)}"
        )
    return 16


def _differences(blobs: list[Any]) -> str:
    """'key: rank 0 = a, rank 1 = b' for every setting that differs between workers."""
    configs = [json.loads(b) if isinstance(b, str) else {} for b in blobs]
    keys = sorted(set().union(*configs))
    parts = []
    for key in keys:
        values = [c.get(key) for c in configs]
        if any(v != values[0] for v in values):
            shown = ", ".join(f"rank {r} = {json.dumps(v)[:80]}" for r, v in enumerate(values))
            parts.append(f"{key}: {shown}")
    return "; ".join(parts) if parts else "world sizes differ"


def _all_gather(outs, t, group, what: str, timer: dict | None) -> None:
    """dist.all_gather with errors wrapped; adds its wall time to timer["collective"]."""
    t0 = time.perf_counter()
    try:
        dist.all_gather(outs, t, group=group)
    except Exception as exc:  # noqa: BLE001 - every backend error is reported the same way
        raise _wrap(what, exc) from exc
    finally:
        if timer is not None:
            timer["collective"] = timer.get("collective", 0.0) + time.perf_counter() - t0


def exchange_bytes(
    payload: bytes, status: int, group=None, device: Any = "cpu", timer: dict | None = None
) -> tuple[list[int], list[memoryview], int]:
    """All-gather variable-length packets. Returns (statuses, packets, bytes this worker sent).

    Step 1 gathers one int32 per worker (packet length, or −status when not OK); step 2, only
    when every status is OK, gathers the packets padded to the longest one. ``timer``: the
    seconds spent inside the collectives (waiting for peers + transfer) are added to
    ``timer["collective"]``. Packets are read-only byte views (no copy).
    """
    world = _world(group)
    head = torch.tensor([len(payload) if status == STATUS_OK else -status], dtype=torch.int32,
                        device=device)
    heads = [torch.zeros(1, dtype=torch.int32, device=device) for _ in range(world)]
    _all_gather(heads, head, group, "packet length exchange", timer)
    lengths = [int(h.item()) for h in heads]
    statuses = [STATUS_OK if n >= 0 else -n for n in lengths]
    sent = 4
    if any(s != STATUS_OK for s in statuses):
        return statuses, [], sent
    longest = max(lengths)
    if longest == 0:
        return statuses, [memoryview(b"")] * world, sent
    buf = torch.zeros(longest, dtype=torch.uint8)
    if payload:
        buf.numpy()[: len(payload)] = np.frombuffer(payload, dtype=np.uint8)
    buf = buf.to(device)
    outs = [torch.empty(longest, dtype=torch.uint8, device=device) for _ in range(world)]
    _all_gather(outs, buf, group, "packet exchange", timer)
    packets = [memoryview(o.cpu().numpy()[:n]) for o, n in zip(outs, lengths, strict=True)]
    return statuses, packets, sent + longest


def exchange_words(
    words: np.ndarray, group=None, device: Any = "cpu", timer: dict | None = None
) -> tuple[list[int], list[np.ndarray], int]:
    """All-gather fixed-size int32 packets whose word 0 is the status (``timer`` as in
    :func:`exchange_bytes`)."""
    world = _world(group)
    t = torch.from_numpy(np.ascontiguousarray(words, dtype=np.int32)).to(device)
    outs = [torch.empty_like(t) for _ in range(world)]
    _all_gather(outs, t, group, "padded packet exchange", timer)
    arrays = [o.cpu().numpy() for o in outs]
    return [int(a[0]) for a in arrays], arrays, 4 * int(words.size)
