"""Communicate: Sparse Binary / Ternary Compression for distributed and federated training.

Pure core (no process group): :func:`sbc`, :func:`stc`, :func:`topk`, :func:`dense`, the
compressor classes, :func:`topk_indices`, :class:`ResidualMemory`; wire packets
(:class:`PacketCodec`, Golomb–Rice positions); the :class:`BitLedger`.
On ``torch.distributed``: the DDP hook (:class:`SBCState` + :func:`sbc_hook`, delay 1) and
:class:`SBCAverager` (delay n > 1). :class:`FederatedSimulator` runs many clients in one process.
"""

from .averager import SBCAverager
from .comm import CommunicationError, ConfigMismatch
from .core import (
    SBC,
    STC,
    Compressor,
    Dense,
    Message,
    NonFiniteUpdate,
    ResidualMemory,
    TopK,
    dense,
    make_compressor,
    num_selected,
    sbc,
    stc,
    topk,
    topk_indices,
)
from .federated import FederatedSimulator, split_non_iid
from .hook import SBCState, sbc_hook
from .ledger import BitLedger
from .wire import PacketCodec, Slot

__all__ = [
    "BitLedger",
    "CommunicationError",
    "Compressor",
    "ConfigMismatch",
    "Dense",
    "FederatedSimulator",
    "Message",
    "NonFiniteUpdate",
    "PacketCodec",
    "ResidualMemory",
    "SBC",
    "SBCAverager",
    "SBCState",
    "STC",
    "Slot",
    "TopK",
    "dense",
    "make_compressor",
    "num_selected",
    "sbc",
    "sbc_hook",
    "split_non_iid",
    "stc",
    "topk",
    "topk_indices",
]
