"""Fine-tuning API (dnnzip.nn.finetune) on scikit-learn's digits with a tiny MLP."""

from __future__ import annotations

import gzip
import math

import numpy as np
import pytest
import torch
from torch import nn

from dnnzip.codec import InvalidOption
from dnnzip.nn.data import load_digits, load_fashion_mnist, read_idx
from dnnzip.nn.finetune import (
    Pruner,
    WeightSharing,
    distillation_loss,
    iter_codebook_parameters,
    iterative_prune,
    model_sparsity,
    prunable_parameters,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def digits():
    return load_digits(test_fraction=0.25, seed=0)


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))


def run_epochs(model, opt, data, epochs, seed=0, batch=64):
    x, y = data[0], data[1]
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), batch):
            idx = perm[i : i + batch]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()


@torch.no_grad()
def accuracy_of(model, data) -> float:
    return float((model(data[2]).argmax(1) == data[3]).float().mean())


@torch.no_grad()
def loss_of(model, data) -> float:
    return float(nn.functional.cross_entropy(model(data[2]), data[3]))


@pytest.fixture(scope="module")
def trained(digits):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    run_epochs(model, opt, digits, 15)
    return model.state_dict()


def fresh(trained) -> nn.Sequential:
    model = mlp()
    model.load_state_dict(trained)
    return model


# --- pruning ----------------------------------------------------------------------------
def test_prunable_parameters_skip_biases_and_norms():
    model = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3), nn.Conv1d(3, 2, 1), nn.BatchNorm1d(2))
    assert prunable_parameters(model) == ["0.weight", "2.weight"]


OPTIMIZERS = {
    "sgd-momentum-wd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-3),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-3),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=1e-2),
}


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_masks_keep_pruned_weights_zero_with_stateful_optimizer(trained, digits, opt_name):
    model = fresh(trained)
    # the optimizer is created, and its momentum filled, *before* pruning: the hard case
    opt = OPTIMIZERS[opt_name](model.parameters())
    run_epochs(model, opt, digits, 1, seed=1)
    pruner = Pruner(model)
    pruner.prune(0.8)
    before = {n: model.get_parameter(n).detach().clone() for n in pruner.names}
    with pruner:
        run_epochs(model, opt, digits, 2, seed=2)
    for n in pruner.names:
        w, mask = model.get_parameter(n).detach(), pruner.masks[n]
        assert torch.all(w[~mask] == 0), n
        assert not torch.equal(w[mask], before[n][mask]), f"{n}: kept weights did not train"
        state = opt.state[model.get_parameter(n)]
        for buf in state.values():
            if isinstance(buf, torch.Tensor) and buf.shape == w.shape:
                assert torch.all(buf[~mask] == 0)
    # the biases are never pruned
    assert model_sparsity(model, ["0.bias", "2.bias"])["total"] == 0.0


def test_without_enforcement_momentum_revives_pruned_weights(trained, digits):
    """The control for the test above: the same run without the pruner attached fails it."""
    model = fresh(trained)
    opt = OPTIMIZERS["sgd-momentum-wd"](model.parameters())
    run_epochs(model, opt, digits, 1, seed=1)
    pruner = Pruner(model)
    pruner.prune(0.8)
    run_epochs(model, opt, digits, 1, seed=2)
    w = model.get_parameter("0.weight").detach()
    assert torch.count_nonzero(w[~pruner.masks["0.weight"]]) > 0


def test_sparsity_reached_per_layer_dict_global_and_quality(trained):
    model = fresh(trained)
    pruner = Pruner(model)
    got = pruner.prune(0.7)
    for n in pruner.names:
        numel = model.get_parameter(n).numel()
        assert got[n] == pytest.approx(math.floor(0.7 * numel) / numel, abs=1e-12)
        assert model_sparsity(model)[n] == pytest.approx(got[n])
    got = pruner.prune({"0.weight": 0.9})
    assert got["0.weight"] == pytest.approx(0.9, abs=1 / 3072)
    assert got["2.weight"] == pytest.approx(0.7, abs=1 / 480)

    model = fresh(trained)
    got = Pruner(model).prune(0.85, scope="global")
    assert got["total"] == pytest.approx(0.85, abs=1e-3)
    assert got["0.weight"] != pytest.approx(
        got["2.weight"], abs=1e-3
    )  # one threshold, not one rate

    model = fresh(trained)
    w0 = model.get_parameter("0.weight").detach().clone()
    pruner = Pruner(model)
    pruner.prune(quality=1.0)
    t = float(w0.std(correction=0))  # population std, as numpy
    kept = pruner.masks["0.weight"]
    assert torch.all(w0[kept].abs() >= t) and torch.all(w0[~kept].abs() < t)

    with pytest.raises(InvalidOption):
        Pruner(model).prune({"nope.weight": 0.5})
    with pytest.raises(InvalidOption):
        Pruner(model).prune(0.5, quality=1.0)


def test_iterative_prune_follows_schedule_and_masks_only_grow(trained, digits):
    model = fresh(trained)
    masks = []

    def train_fn(m):
        opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
        run_epochs(m, opt, digits, 2, seed=len(masks))

    def eval_fn(m):
        masks.append({n: (m.get_parameter(n) != 0).clone() for n in prunable_parameters(m)})
        return accuracy_of(m, digits)

    pruner = iterative_prune(model, train_fn, [0.5, 0.75, 0.9], eval_fn=eval_fn)
    totals = [h["sparsity"]["total"] for h in pruner.history]
    assert totals == pytest.approx([0.5, 0.75, 0.9], abs=2e-3)
    for earlier, later in zip(masks, masks[1:], strict=False):
        for n in earlier:
            assert not torch.any(later[n] & ~earlier[n]), "a pruned weight came back"
    assert pruner.history[-1]["metric"] > 0.85  # retraining keeps a 90 %-sparse MLP useful


# --- weight sharing ---------------------------------------------------------------------
def _pruned_retrained(trained, digits, sparsity=0.7):
    model = fresh(trained)
    pruner = Pruner(model)
    pruner.prune(sparsity)
    with pruner:
        run_epochs(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), digits, 3)
    return model, pruner


def test_centroid_gradient_is_sum_of_member_gradients(trained, digits):
    model, pruner = _pruned_retrained(trained, digits)
    x, y = digits[0][:200], digits[1][:200]
    with WeightSharing(model, bits=3) as ws:
        # reference: autograd on plain dense copies of the shared weights
        dense = [model[0].weight.detach().clone().requires_grad_(),
                 model[2].weight.detach().clone().requires_grad_()]  # fmt: skip
        h = torch.relu(x @ dense[0].T + model[0].bias)
        nn.functional.cross_entropy(h @ dense[1].T + model[2].bias, y).backward()
        nn.functional.cross_entropy(model(x), y).backward()
        for (name, book), w in zip(ws.codebooks.items(), dense, strict=True):
            idx, mask = ws.indices[name], ws.masks[name]
            expected = torch.zeros_like(book).index_add_(0, idx[mask], w.grad[mask])
            assert torch.allclose(book.grad, expected, rtol=1e-5, atol=1e-7), name
            assert book.grad.abs().sum() > 0
            assert torch.equal(mask, pruner.masks[name])  # the pruned set is the mask


@pytest.mark.parametrize("bits", [2, 4])
def test_sharing_finetune_gives_at_most_2_pow_bits_values_and_does_not_hurt(trained, digits, bits):
    model, pruner = _pruned_retrained(trained, digits)
    zeros_before = {n: model.get_parameter(n).detach() == 0 for n in pruner.names}
    with WeightSharing(model, bits=bits) as ws:
        assert set(n for n, _ in model.named_parameters() if "original" in n) == {
            "0.parametrizations.weight.original",
            "2.parametrizations.weight.original",
        }
        acc_shared, loss_shared = accuracy_of(model, digits), loss_of(model, digits)
        books_before = {n: b.detach().clone() for n, b in ws.codebooks.items()}
        opt = torch.optim.Adam(iter_codebook_parameters(model), lr=2e-3)
        run_epochs(model, opt, digits, 5, seed=7)
        moved = [not torch.equal(b.detach(), books_before[n]) for n, b in ws.codebooks.items()]
    assert all(moved)
    acc_ft, loss_ft = accuracy_of(model, digits), loss_of(model, digits)
    for n in pruner.names:
        w = model.get_parameter(n).detach()  # a plain parameter again
        assert isinstance(model.get_parameter(n), nn.Parameter)
        assert torch.unique(w[w != 0]).numel() <= 2**bits
        assert torch.equal(w == 0, zeros_before[n])  # pruned stay zero, no new zeros
    assert loss_ft < loss_shared
    assert acc_ft >= acc_shared - 0.005


def test_sharing_bits_defaults_and_validation():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    ws = WeightSharing(model)
    assert ws.bits == {"0.weight": 8, "2.weight": 5}
    assert WeightSharing(model, {"2.weight": 3}).bits == {"0.weight": 8, "2.weight": 3}
    with pytest.raises(InvalidOption):
        WeightSharing(model, bits=0)
    with pytest.raises(InvalidOption):
        WeightSharing(model, bits={"1.weight": 4})


def test_assigning_a_weight_refits_the_codebook():
    torch.manual_seed(0)
    lin = nn.Linear(20, 10)
    with WeightSharing(nn.Sequential(lin), bits=2):
        target = lin.weight.detach() * 2.0  # same assignment, doubled values
        lin.weight = target
        assert torch.allclose(lin.weight, target, atol=1e-6)


# --- data ---------------------------------------------------------------------------------
def test_read_idx_and_missing_fashion_mnist(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = bytes([0, 0, 0x08, 3]) + np.array(arr.shape, ">u4").tobytes() + arr.tobytes()
    with gzip.open(tmp_path / "x-idx3-ubyte.gz", "wb") as f:
        f.write(raw)
    assert np.array_equal(read_idx(tmp_path / "x-idx3-ubyte.gz"), arr)
    (tmp_path / "bad").write_bytes(raw[:-1])
    with pytest.raises(ValueError, match="size"):
        read_idx(tmp_path / "bad")
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train", root=tmp_path)


def test_distillation_loss_limits_and_gradient():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(16, 10, generator=gen, requires_grad=True)
    t = torch.randn(16, 10, generator=gen)
    y = torch.randint(0, 10, (16,), generator=gen)
    ce = nn.functional.cross_entropy(z, y)
    assert torch.allclose(distillation_loss(z, y, t, alpha=0.0), ce)
    # the soft term alone: T²·KL(teacher ‖ student) at temperature T, zero at the teacher
    temp = 3.0
    p_t = torch.softmax(t / temp, 1)
    kl = (p_t * (torch.log(p_t) - torch.log_softmax(z / temp, 1))).sum(1).mean()
    assert torch.allclose(distillation_loss(z, y, t, 1.0, temp), temp**2 * kl, atol=1e-6)
    at_teacher = t.clone().requires_grad_(True)
    loss = distillation_loss(at_teacher, y, t, alpha=1.0, temperature=temp)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    assert float(at_teacher.grad.abs().max()) < 1e-6
    # the gradient w.r.t. the student logits is (softmax(z/T) − softmax(z_t/T))·T / batch
    z.grad = None
    distillation_loss(z, y, t, 1.0, temp).backward()
    expected = (torch.softmax(z.detach() / temp, 1) - p_t) * temp / len(y)
    assert torch.allclose(z.grad, expected, atol=1e-6)
    # no gradient flows into the teacher
    teacher = t.clone().requires_grad_(True)
    distillation_loss(z, y, teacher, 0.5).backward()
    assert teacher.grad is None
    with pytest.raises(InvalidOption):
        distillation_loss(z, y, t, alpha=1.5)
    with pytest.raises(InvalidOption):
        distillation_loss(z, y, t, temperature=0.0)


def test_distillation_retraining_recovers_a_pruned_net(trained, digits):
    """Retraining a heavily pruned MLP on the dense net's soft labels ends closer to the dense
    net's outputs than without the soft term (same masks, seed and epochs)."""
    teacher = fresh(trained)
    x = digits[0]
    with torch.no_grad():
        t_logits = teacher(x)

    def retrain(alpha):
        model = fresh(trained)
        pruner = Pruner(model)
        pruner.prune(0.9)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        gen = torch.Generator().manual_seed(1)
        with pruner:
            for _ in range(10):
                perm = torch.randperm(len(x), generator=gen)
                for i in range(0, len(x), 64):
                    idx = perm[i : i + 64]
                    opt.zero_grad()
                    distillation_loss(
                        model(x[idx]), digits[1][idx], t_logits[idx], alpha, 4.0
                    ).backward()
                    opt.step()
        with torch.no_grad():
            return model, float(
                nn.functional.kl_div(
                    torch.log_softmax(model(x), 1),
                    torch.log_softmax(t_logits, 1),
                    log_target=True,
                    reduction="batchmean",
                )
            )

    plain, kl_plain = retrain(0.0)
    distilled, kl_distilled = retrain(0.9)
    assert model_sparsity(distilled)["total"] == pytest.approx(0.9, abs=0.01)
    assert kl_distilled < kl_plain


def test_grid_training_leaves_exact_grid_weights_that_deepcabac_codes_losslessly(tmp_path):
    import dnnzip
    from dnnzip.methods.deepcabac import DeepCabacMethod
    from dnnzip.nn import GridTraining, LeNet300100

    torch.manual_seed(0)
    net = LeNet300100()
    with torch.no_grad():
        net.fc1.weight[net.fc1.weight.abs() < 0.02] = 0
    pruned = net.fc1.weight.detach() == 0
    method = DeepCabacMethod(qp=-22, dq=False, lam=0.0, offsets={"fc2.weight": 2.0})
    steps = {n: method.step_for(n) for n in ("fc1.weight", "fc2.weight")}
    before = {n: net.get_parameter(n).detach().clone() for n in steps}
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    with GridTraining(net, steps):
        opt = torch.optim.SGD(net.parameters(), lr=0.5)
        first = None
        for _ in range(5):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(x), y)
            first = float(loss.detach()) if first is None else first
            loss.backward()
            opt.step()
        assert nn.functional.cross_entropy(net(x), y).item() < first  # straight-through learns
    for n, s in steps.items():
        w = net.get_parameter(n).detach()
        r = w / s
        assert torch.equal(r, torch.round(r)), n  # exact multiples of the step
        assert not torch.equal(w, before[n])
    assert bool((net.fc1.weight.detach()[pruned] == 0).all())  # pruned weights stay zero
    path = tmp_path / "g.dnnz"
    dnnzip.compress(net, path, method="deepcabac", qp=-22, dq=False, lam=0.0,
                    offsets={"fc2.weight": 2.0}, progress=False)
    back = dnnzip.decompress(path, progress=False)
    for n in steps:
        assert torch.equal(back[n], net.get_parameter(n).detach()), n


def test_grid_training_bad_input():
    from dnnzip.nn import GridTraining, LeNet300100

    net = LeNet300100()
    with pytest.raises(InvalidOption, match="not parameters"):
        GridTraining(net, {"fc9.weight": 0.1})
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(InvalidOption, match="positive"):
            GridTraining(net, {"fc1.weight": bad})
    net.register_parameter("counts", nn.Parameter(torch.zeros(3, dtype=torch.long),
                                                  requires_grad=False))
    with pytest.raises(InvalidOption, match="not a float parameter"):
        GridTraining(net, {"counts": 0.1})
