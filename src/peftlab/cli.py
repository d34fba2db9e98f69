"""What every `python -m peftlab.<stage>` entry point shares: --spec, --threads, logging."""

from __future__ import annotations

import argparse
import logging
import os

from peftlab import artifacts


def parser(doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", required=True, help="the step's resolved spec (JSON), written by the workflow")
    p.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads of the job, shared by the processes torchrun starts on this node"
    )
    return p


def start(args: argparse.Namespace) -> dict:
    """Set up logging and threads; return the spec."""
    rank = os.environ.get("RANK")
    where = f" [rank {rank}]" if rank is not None else ""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(name)s{where} %(levelname)s %(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(max(1, args.threads // int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
    return artifacts.read_json(args.spec)
