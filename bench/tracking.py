"""What mechanistic tracking costs (peftlab.tracking): training throughput with the tracker off and on, and one spectral
record's time.

    python bench/tracking.py [--steps 300] [--rounds 2] [--layer 4096] [--rank 16]

1. The throughput benchmark's model and data (bench/throughput.py: a small Llama, LoRA r=16
   on every linear layer, variable-length batches), trained by peftlab's trainer with the
   tracker off and with spectral and gradient tracking at frequency 100, alternating, in one
   process. The rate is real tokens per second of the whole train() call, so the tracker's
   setup (W's SVDs) and its final record count against it. Prints both and the overhead, and
   the tracker's own timed seconds as a share of the run (the same overhead, without the noise
   of two separate runs).
2. One layer of `--layer` × `--layer` at rank `--rank`: the time of one ΔW record the
   dense way (form ΔW = B A, full SVD) and the low-rank way (QR of the factors, an r×r SVD),
   and of W's SVD, which the tracker takes once per layer per run.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch
import transformers
from throughput import make_data, make_model, spec_for

from peftlab.spec import TrackerSpec
from peftlab.tracking import spectra
from peftlab.train import train


def tracked(spec, on: bool):
    settings = TrackerSpec(
        enable_spectral_tracking=on, enable_gradient_tracking=on, spectral_log_frequency=100, gradient_log_frequency=100
    )
    return dataclasses.replace(spec, tracker=settings)


def rate(spec, root: Path, tag: str) -> tuple[float, dict, float]:
    start = time.perf_counter()
    record = train(spec, root / f"adapter-{tag}", root / f"{tag}/train.json", root / "checkpoints")
    wall = time.perf_counter() - start
    return record["tokens_seen"] / wall, record["tracking"], wall


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def layer_costs(n: int, r: int, repeats: int) -> tuple[float, float, float]:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(n, n, generator=g) / n**0.5
    b, a = torch.randn(n, r, generator=g) * 1e-2, torch.randn(r, n, generator=g) / n**0.5
    w_time = best_of(lambda: spectra.basis(w, r), 1)
    basis = spectra.basis(w, r)
    dense = best_of(
        lambda: spectra.quantities(*spectra.svd_dense(b @ a), basis, (n, n), 16), 1
    )  # seconds at 4096: once
    low = best_of(lambda: spectra.quantities(*spectra.svd_factored(b, a), basis, (n, n), 16), repeats)
    return dense, low, w_time


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300, help="optimizer steps of each training run")
    p.add_argument("--batch", type=int, default=8, help="examples per step")
    p.add_argument("--hidden", type=int, default=256, help="model width")
    p.add_argument("--layers", type=int, default=4, help="decoder layers")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best of each is compared")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--layer", type=int, default=4096, help="width of the square layer timed in part 2")
    p.add_argument("--rank", type=int, default=16, help="rank of its ΔW")
    p.add_argument(
        "--repeats", type=int, default=5, help="timings of the low-rank record in part 2 (the best is shown)"
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_model(root, hidden=args.hidden, layers=args.layers)
        spec = spec_for(root, args.steps, args.batch)
        make_data(spec.data_dir, n=args.steps * args.batch * 2)
        off, on, seconds = [], [], {}
        for i in range(args.rounds):  # alternate, so warm-up favours neither
            off.append(rate(tracked(spec, False), root, f"off{i}")[0])
            value, record, wall = rate(tracked(spec, True), root, f"on{i}")
            on.append(value)
            seconds, share = record["seconds"], sum(record["seconds"].values()) / wall
            steps = record["spectral_steps"], record["gradient_steps"]
    print(
        f"model: Llama hidden {args.hidden} x {args.layers} layers, LoRA r=16 all-linear; {args.steps} steps x "
        f"batch {args.batch}; "
        f"best of {args.rounds} alternating rounds, {args.threads} threads"
    )
    print(f"tracking off:             {max(off):8.0f} real tokens/s   rounds: {[round(x) for x in off]}")
    print(f"tracking at frequency 100: {max(on):8.0f} real tokens/s   rounds: {[round(x) for x in on]}")
    print(f"spectral records at steps {steps[0]}, gradient records at steps {steps[1]}; tracker seconds {seconds}")
    print(f"ratio on / off: {max(on) / max(off):.3f}x (overhead {100 * (1 - max(on) / max(off)):.1f}%)")
    print(
        f"the tracker's own time: {100 * share:.2f}% of the tracked run's wall time (noise-free; the ratio "
        "above includes run-to-run noise)"
    )
    dense, low, w_time = layer_costs(args.layer, args.rank, args.repeats)
    print(
        f"one ΔW record, {args.layer}x{args.layer} layer at rank {args.rank}: dense {1000 * dense:.1f} ms, "
        f"low-rank {1000 * low:.2f} ms"
    )
    print(f"ratio dense / low-rank: {dense / low:.1f}x; W's SVD (once per layer per run): {1000 * w_time:.0f} ms")


if __name__ == "__main__":
    main()
