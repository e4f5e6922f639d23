"""Federated learning simulator: many clients in one process, STC up- and downstream.

Each round a random subset of clients (partial participation) starts from the global model
W, runs ``local_steps`` SGD steps on its own (non-IID) data and uploads its weight change,
error-fed and compressed per tensor (client residuals persist across the rounds a client
takes part in). The server averages the decoded updates and, with a downstream compressor,
adds them to its own residual and broadcasts the compressed result (STC compresses the
server's broadcast too), which is what W moves by.

Downstream accounting (``downstream=``):

* ``"catch-up"`` (default): point-to-point links; a client chosen in round r that last held
  the model in round s downloads the broadcasts of rounds s … r−1 (capped at the dense model,
  32·N bits) — the price of partial participation. Dense FedAvg: 32·N per chosen client.
* ``"broadcast"``: a shared broadcast channel that every client listens to; each round's
  server message is counted once (dense FedAvg: one 32·N broadcast per round).
Every packet is really encoded and decoded (``PacketCodec``); the ledger holds exact bits
and bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..codec import InvalidOption
from .core import Compressor, ResidualMemory, _subtract, dense, make_compressor
from .ledger import BitLedger
from .wire import PacketCodec, Slot

__all__ = ["FederatedSimulator", "split_non_iid"]


def split_non_iid(
    labels: np.ndarray, n_clients: int = 100, classes_per_client: int = 2, seed: int = 0
) -> list[np.ndarray]:
    """Indices per client; each client holds samples of exactly ``classes_per_client`` classes.

    The n_clients·classes_per_client (client, class) pairs are spread evenly over the classes,
    and each class's samples are shared out equally among the clients holding it.
    """
    labels = np.asarray(labels)
    classes = np.unique(labels)
    if n_clients < 1 or not 1 <= classes_per_client <= classes.size:
        raise InvalidOption(
            f"cannot give {n_clients} clients {classes_per_client} of {classes.size} classes each"
        )
    rng = np.random.default_rng(seed)
    # client i gets classes (start_i + j·stride) — distinct for j < classes_per_client
    n_cls = classes.size
    pairs = []
    for i in range(n_clients):
        start = (i * classes_per_client) % n_cls
        stride = 1 + (i // n_cls) % max(1, n_cls - 1) if classes_per_client > 1 else 1
        chosen = {(start + j * stride) % n_cls for j in range(classes_per_client)}
        j = classes_per_client
        while len(chosen) < classes_per_client:  # stride shares a factor with n_cls
            chosen.add((start + j) % n_cls)
            j += 1
        pairs.append(sorted(chosen))
    holders: dict[int, list[int]] = {c: [] for c in range(n_cls)}
    for i, cs in enumerate(pairs):
        for c in cs:
            holders[c].append(i)
    parts: list[list[np.ndarray]] = [[] for _ in range(n_clients)]
    for c, who in holders.items():
        if not who:
            continue
        idx = rng.permutation(np.flatnonzero(labels == classes[c]))
        for i, chunk in zip(who, np.array_split(idx, len(who)), strict=True):
            parts[i].append(chunk)
    return [np.sort(np.concatenate(p)) if p else np.empty(0, np.int64) for p in parts]


class FederatedSimulator:
    """FedAvg-style training with compressed up/down communication (see module doc)."""

    def __init__(
        self,
        model: nn.Module,
        clients: Sequence[tuple[torch.Tensor, torch.Tensor]],
        *,
        up: str | Compressor = "stc",
        p_up: float = 0.01,
        down: str | Compressor | None = "stc",
        p_down: float = 0.01,
        clients_per_round: int = 10,
        local_steps: int = 5,
        batch_size: int = 20,
        lr: float = 0.05,
        seed: int = 0,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        ledger: BitLedger | None = None,
        downstream: str = "catch-up",
    ):
        if downstream not in ("catch-up", "broadcast"):
            raise InvalidOption(f"downstream must be 'catch-up' or 'broadcast', got {downstream!r}")
        self.downstream = downstream
        if not clients:
            raise InvalidOption("the simulator needs at least one client")
        if not 1 <= clients_per_round <= len(clients):
            raise InvalidOption(
                f"clients_per_round must be in [1, {len(clients)}], got {clients_per_round}"
            )
        if local_steps < 1 or batch_size < 1 or not lr > 0:
            raise InvalidOption("local_steps, batch_size and lr must be positive")
        self.model = model
        self.clients = list(clients)
        self.up = up if isinstance(up, Compressor) else make_compressor(up, p_up)
        self.down = (down if isinstance(down, Compressor) or down is None
                     else make_compressor(down, p_down))
        self.clients_per_round = clients_per_round
        self.local_steps = local_steps
        self.batch_size = batch_size
        self.lr = lr
        self.loss_fn = loss_fn or nn.functional.cross_entropy
        self.ledger = ledger if ledger is not None else BitLedger()
        self.rng = np.random.default_rng(seed)
        self.names = [n for n, _ in model.named_parameters()]
        self.params = [prm for _, prm in model.named_parameters()]
        self.numel = sum(prm.numel() for prm in self.params)
        self.global_params = [prm.detach().clone() for prm in self.params]
        self.client_residuals: dict[int, ResidualMemory] = {}
        self.server_residual = ResidualMemory()
        slots = [Slot(n, prm.numel(), True) for n, prm in zip(self.names, self.params,
                                                               strict=True)]
        self.up_codec = PacketCodec(slots, self.up.method, self.up.p)
        self.down_codec = (PacketCodec(slots, self.down.method, self.down.p)
                           if self.down is not None else None)
        self.broadcast_bits: list[int] = []
        self.broadcast_bytes: list[int] = []
        self.last_sync = np.zeros(len(self.clients), dtype=np.int64)
        self.round = 0

    def _load(self, params: Sequence[torch.Tensor]) -> None:
        with torch.no_grad():
            for prm, src in zip(self.params, params, strict=True):
                prm.copy_(src)

    def _local_train(self, cid: int) -> None:
        x, y = self.clients[cid]
        opt = torch.optim.SGD(self.params, lr=self.lr)
        n = len(y)
        for _ in range(self.local_steps):
            idx = torch.from_numpy(self.rng.choice(n, min(self.batch_size, n), replace=False))
            opt.zero_grad(set_to_none=True)
            loss = self.loss_fn(self.model(x[idx]), y[idx])
            loss.backward()
            opt.step()

    def _download(self, cid: int) -> None:
        if self.downstream == "broadcast":
            return  # counted once per round in _broadcast
        dense_bits = 32 * self.numel
        if self.down is None:
            bits, nbytes = dense_bits, 4 * self.numel
        else:
            s = int(self.last_sync[cid])
            bits = min(sum(self.broadcast_bits[s:]), dense_bits)
            nbytes = min(sum(self.broadcast_bytes[s:]), 4 * self.numel)
        self.ledger.record(self.round, direction="down", dense_bits=dense_bits,
                           golomb_bits=bits, sent_bytes=nbytes)

    @torch.no_grad()
    def _upload(self, cid: int) -> list[torch.Tensor]:
        res = self.client_residuals.setdefault(cid, ResidualMemory())
        msgs = []
        for name, prm, g in zip(self.names, self.params, self.global_params, strict=True):
            delta = prm.detach().double().reshape(-1) - g.double().reshape(-1)
            acc = res.accumulate(name, delta)
            m = self.up(acc)
            _subtract(acc, m)
            msgs.append(m)
        payload, bits = self.up_codec.encode(msgs)
        self.ledger.record(self.round, direction="up", dense_bits=32 * self.numel,
                           golomb_bits=bits, sent_bytes=len(payload))
        return [m.to_dense(torch.float64) for m in self.up_codec.decode(payload)]

    @torch.no_grad()
    def _broadcast(self, mean: list[torch.Tensor]) -> None:
        if self.down is None:
            for g, m in zip(self.global_params, mean, strict=True):
                g.add_(m.view_as(g).to(g.dtype))
            if self.downstream == "broadcast":
                self.ledger.record(self.round, direction="down", dense_bits=32 * self.numel,
                                   golomb_bits=32 * self.numel, sent_bytes=4 * self.numel)
            return
        msgs = []
        for name, m in zip(self.names, mean, strict=True):
            acc = self.server_residual.accumulate(name, m)
            msg = self.down(acc) if self.down.method != "dense" else dense(acc)
            _subtract(acc, msg)
            msgs.append(msg)
        payload, bits = self.down_codec.encode(msgs)
        self.broadcast_bits.append(bits)
        self.broadcast_bytes.append(len(payload))
        if self.downstream == "broadcast":
            self.ledger.record(self.round, direction="down", dense_bits=32 * self.numel,
                               golomb_bits=bits, sent_bytes=len(payload))
        for g, msg in zip(self.global_params, self.down_codec.decode(payload), strict=True):
            g.add_(msg.to_dense(g.dtype).view_as(g))

    def run_round(self) -> list[int]:
        """One round; returns the chosen clients."""
        chosen = sorted(self.rng.choice(len(self.clients), self.clients_per_round,
                                        replace=False).tolist())
        total: list[torch.Tensor] | None = None
        for cid in chosen:
            self._download(cid)
            self._load(self.global_params)
            self._local_train(cid)
            upd = self._upload(cid)
            total = upd if total is None else [a.add_(b) for a, b in zip(total, upd, strict=True)]
            self.last_sync[cid] = self.round  # holds W of this round; misses its broadcast
        assert total is not None
        self._broadcast([t.div_(len(chosen)) for t in total])
        self.round += 1
        self._load(self.global_params)
        return chosen

    def run(
        self,
        rounds: int,
        evaluate: Callable[[nn.Module], float] | None = None,
        eval_every: int = 10,
    ) -> list[dict[str, Any]]:
        """Run ``rounds`` rounds; ``evaluate(model)`` on the global model every ``eval_every``."""
        history = []
        for _ in range(rounds):
            self.run_round()
            if evaluate is not None and (self.round % eval_every == 0 or self.round == rounds):
                self._load(self.global_params)
                up, down = self.ledger.totals("up"), self.ledger.totals("down")
                history.append({"round": self.round, "metric": float(evaluate(self.model)),
                                "up_bits": up["golomb_bits"], "down_bits": down["golomb_bits"]})
        self._load(self.global_params)
        return history
