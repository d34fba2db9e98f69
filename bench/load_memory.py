"""Memory of loading a model through peftlab in bfloat16 against float32.

    python bench/load_memory.py [--hidden 1024] [--layers 8]

Builds a Llama of the given size (random weights, saved as a local Hugging Face
folder), then loads it through `peftlab.models.load_model` once per
dtype, each in a fresh process, and measures the process's resident memory:
the memory it holds after loading and its peak, both above what it held after
the imports, having read every weight once (a checkpoint in the loaded dtype is
memory-mapped, so its pages count only once read; a forward pass reads them all).
The checkpoint is saved in bfloat16 (as hub 7B checkpoints are 16-bit), or in
float32 with --saved float32. Prints both figures per dtype, the weights' own
size, and the ratios bfloat16 / float32.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile


def memory() -> tuple[float, float]:
    """(resident now, peak resident so far) of this process, in MiB."""
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return tuple(int(status[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM"))


def child(folder: str, dtype: str) -> None:
    """In a fresh process: load the model in `dtype`; print the memory it holds and the peak, in MiB above the
    imports."""
    from peftlab.models import load_model  # torch, transformers, peft: the baseline includes the libraries
    from peftlab.spec import ModelSpec, TaskSpec

    start, _ = memory()
    model = load_model(ModelSpec(name="bench", path=folder, dtype=dtype), TaskSpec(name="lm", type="lm", data={}))
    for p in (
        model.parameters()
    ):  # read every weight once: memory-mapped pages count only once read (a forward reads them all)
        p.data.sum()
    held, peak = memory()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    dtype_loaded = str(next(model.parameters()).dtype)
    print(
        json.dumps(
            {"dtype": dtype_loaded, "held_mib": held - start, "peak_mib": peak - start, "weights_mib": weights / 2**20}
        )
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument(
        "--saved",
        choices=["bfloat16", "float32"],
        default="bfloat16",
        help="the checkpoint's dtype on disk (hub 7B checkpoints: 16-bit)",
    )
    p.add_argument("--child", nargs=2, metavar=("FOLDER", "DTYPE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(*args.child)

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 8 // 3 // 32 * 32,
        num_hidden_layers=args.layers,
        num_attention_heads=max(1, args.hidden // 64),
        num_key_value_heads=max(1, args.hidden // 64),
    )
    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
        n = model.num_parameters()
        model.to(getattr(torch, args.saved)).save_pretrained(folder)
        del model
        print(
            f"model: Llama, hidden {args.hidden}, {args.layers} layers, {n / 1e6:.1f}M parameters, saved in "
            f"{args.saved}"
        )
        results = {}
        for dtype in ("float32", "bfloat16"):
            out = subprocess.run(
                [sys.executable, __file__, "--child", folder, dtype], capture_output=True, text=True, check=True
            )
            results[dtype] = json.loads(out.stdout.strip().splitlines()[-1])
            r = results[dtype]
            print(
                f"{dtype:9s}: held {r['held_mib']:7.1f} MiB, peak {r['peak_mib']:7.1f} MiB above the imports; "
                f"weights {r['weights_mib']:7.1f} MiB ({r['dtype']})"
            )
        for key in "held_mib", "peak_mib":
            print(
                f"ratio bfloat16 / float32 {key.split('_')[0]}: "
                f"{results['bfloat16'][key] / results['float32'][key]:.2f}x"
            )


if __name__ == "__main__":
    main()
