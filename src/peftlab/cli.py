"""What every `python -m peftlab.<stage>` entry point shares: --spec, --threads, logging."""

from __future__ import annotations

import argparse
import logging

from peftlab import artifacts


def parser(doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", required=True, help="the step's resolved spec (JSON), written by the workflow")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return p


def start(args: argparse.Namespace) -> dict:
    """Set up logging and threads; return the spec."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    return artifacts.read_json(args.spec)
