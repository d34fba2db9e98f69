"""The sharpness probe: the largest eigenvalue of the training loss's Hessian with respect to the trainable parameters.

"Learning Rate Matters" (arXiv 2602.04998) finds that each method's best learning rate tracks this
eigenvalue: gradient descent on a quadratic is stable below a rate of 2 / λ_max, so a method whose
loss is flatter in its own parameters takes a higher rate. The tracker (`tracker.sharpness_probe`)
measures it at initialisation, before the first optimiser step, over the run's first
`tracker.sharpness_batches` training batches.

The Hessian is only ever applied to a vector: torch.autograd.functional.vhp (the Hessian is
symmetric, so vᵀH = (Hv)ᵀ, and the vector-Hessian product is the cheaper one in reverse mode) of
the batch loss as a function of the trainable tensors (torch.func.functional_call), averaged over
the batches, one batch's graph at a time. Its largest eigenvalue is found by Lanczos iteration
(ARPACK's, scipy.sparse.linalg.eigsh, which="LA": the largest algebraic eigenvalue, to a relative
TOLERANCE), not by plain power iteration, which finds the eigenvalue of largest magnitude and
converges at the ratio of the two largest magnitudes: LoRA's Hessian at initialisation (B = 0) is
indefinite, [[0, C], [Cᵀ, H_BB]] in (A, B), with eigenvalue pairs ±σ(C) shifted by H_BB, so power
iteration swings between the pair for dozens of products (on the tiny Llama it still read 5.6 after
20 products and 19.2 after 80, where Lanczos gives 19.2 in 21). ARPACK keeps NCV vectors of the
trainable parameters in float64 on the host.

The model is probed in eval mode (no dropout: the function must be the same at every product),
with attention in PyTorch's math kernel (the fused kernels have no double backward), and the RNG
states are restored afterwards, so the run trains as it would have without the probe.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import numpy as np
import torch

TOLERANCE = 1e-3  # relative accuracy of the eigenvalue
MAX_RESTARTS = 10  # ARPACK restarts (about NCV products each) before the estimate is recorded as not converged
NCV = 20  # Lanczos vectors kept (ARPACK's default for one eigenvalue)
SEED = 0  # the start vector's


def largest_eigenvalue(
    hvp: Callable[[list[torch.Tensor]], list[torch.Tensor]],
    like: list[torch.Tensor],
    tolerance: float = TOLERANCE,
    seed: int = SEED,
) -> tuple[float, int, bool]:
    """(the largest algebraic eigenvalue of the symmetric operator `hvp`, the products taken, whether it converged).

    `like`: tensors of the shapes, dtypes and devices the operator acts on (the parameters)."""
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

    sizes = [p.numel() for p in like]
    n, taken = sum(sizes), 0

    def matvec(x: np.ndarray) -> np.ndarray:
        nonlocal taken
        taken += 1
        parts = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64).ravel()).split(sizes)
        hv = hvp([part.view(p.shape).to(p.device, p.dtype) for part, p in zip(parts, like)])
        return torch.cat([h.detach().double().flatten().cpu() for h in hv]).numpy()

    if n < 3:  # too small for ARPACK (it needs k < ncv <= n): the whole Hessian, column by column
        h = np.stack([matvec(column) for column in np.eye(n)], axis=1)
        return float(np.linalg.eigvalsh((h + h.T) / 2)[-1]), taken, True
    v0 = np.random.default_rng(seed).standard_normal(n)
    operator = LinearOperator((n, n), matvec=matvec, dtype=np.float64)
    try:
        values = eigsh(
            operator,
            k=1,
            which="LA",
            v0=v0,
            ncv=min(NCV, n),
            tol=tolerance,
            maxiter=MAX_RESTARTS,
            return_eigenvectors=False,
        )
        return float(values[0]), taken, True
    except ArpackNoConvergence as e:
        return (float(e.eigenvalues[-1]) if len(e.eigenvalues) else float("nan")), taken, False


def hessian_eigenvalue(
    model: torch.nn.Module, batches: list[dict], tolerance: float = TOLERANCE, context: Callable | None = None
) -> dict:
    """The top Hessian eigenvalue of the mean of `model(**batch)["loss"]` over `batches` with respect to the model's
    trainable tensors: {"top_eigenvalue", "batches", "iterations" (Hessian-vector products), "converged", "seconds"}.

    `context`: a context manager factory the loss is computed in (the Trainer's autocast)."""
    from contextlib import nullcontext

    from torch.func import functional_call
    from torch.nn.attention import SDPBackend, sdpa_kernel

    start = time.perf_counter()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = tuple(p.detach() for n, p in model.named_parameters() if p.requires_grad)
    context = context or nullcontext

    def loss_of(batch):
        def loss(*tensors):
            with context():
                return functional_call(model, dict(zip(names, tensors)), args=(), kwargs=batch)["loss"].float()

        return loss

    def hvp(v: list[torch.Tensor]) -> list[torch.Tensor]:
        total = None
        for batch in batches:
            _, products = torch.autograd.functional.vhp(loss_of(batch), params, tuple(v))
            total = list(products) if total is None else [t + p for t, p in zip(total, products)]
        return [t / len(batches) for t in total]

    training = model.training
    devices = sorted({p.device.index for p in params if p.device.type == "cuda"})
    model.eval()
    try:
        with torch.random.fork_rng(devices=devices), sdpa_kernel(SDPBackend.MATH):
            value, taken, converged = largest_eigenvalue(hvp, list(params), tolerance)
    finally:
        model.train(training)
    return {
        "top_eigenvalue": value,
        "batches": len(batches),
        "iterations": taken,
        "converged": converged,
        "seconds": round(time.perf_counter() - start, 3),
    }


def first_batches(dataset, order: Iterable[int], collate, batch_size: int, count: int, device) -> list[dict]:
    """The first `count` batches of `batch_size` rows of `dataset` in `order` (the training sampler's indices),
    collated and moved to `device`."""
    indices = []
    for i in order:
        indices.append(int(i))
        if len(indices) == batch_size * count:
            break
    chunks = [indices[s : s + batch_size] for s in range(0, len(indices), batch_size)]
    batches = [collate([dataset[i] for i in chunk]) for chunk in chunks]
    return [{k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()} for b in batches]
