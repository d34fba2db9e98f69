"""What every `python -m peftlab.<stage>` entry point shares: --spec, --threads, logging."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from peftlab import artifacts


class ClearError(Exception):
    """An error whose message names what failed and what to do: an entry point prints it as one line, without a
    traceback."""


def one_line_errors() -> None:
    """Print an uncaught ClearError as its traceback's last line alone (`module.Class: message`, the line
    peftlab.status reads in a stage's log) and exit with status 1; any other error keeps its traceback."""
    sys.excepthook = _excepthook


def _excepthook(kind, error, tb) -> None:
    if issubclass(kind, ClearError):
        print(f"{kind.__module__}.{kind.__qualname__}: {error}", file=sys.stderr)
    else:
        sys.__excepthook__(kind, error, tb)


def parser(doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", required=True, help="the step's resolved spec (JSON), written by the workflow")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads of the job, shared by the processes torchrun starts on this node",
    )
    return p


def start(args: argparse.Namespace) -> dict:
    """Set up logging, threads and one-line errors; return the spec."""
    one_line_errors()
    rank = os.environ.get("RANK")
    where = f" [rank {rank}]" if rank is not None else ""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(name)s{where} %(levelname)s %(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(max(1, args.threads // int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
    return artifacts.read_json(args.spec)
