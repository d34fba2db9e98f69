"""Drawing a plot without risking the tables around it: a plot the data cannot give is left out,
and the reason goes into the tables' summary (peftlab.plots, peftlab.tracking.report)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

log = logging.getLogger(__name__)


class NotDrawn(Exception):
    """A plot left out because the data cannot give it; the message says why."""


DRAWABLE = 1e100  # past this, matplotlib's limit and tick arithmetic overflows float64


def check_drawable(values, what: str) -> None:
    """NotDrawn when a finite value is beyond what an axis can hold (a collapsed run can record 1e308)."""
    big = [x for x in values if isinstance(x, (int, float)) and math.isfinite(x) and abs(x) > DRAWABLE]
    if big:
        raise NotDrawn(f"{what} of {big[0]:.3g} is too large to draw")


def attempt(notes: list[str], path: Path, draw, *args) -> Path | None:
    """`draw(*args, path)`, or None with a line in `notes` saying why the plot was left out. A plot that fails
    in a way nobody foresaw loses itself only (logged with its traceback), never the tables around it."""
    try:
        return draw(*args, path)
    except NotDrawn as e:
        notes.append(f"{path.name}: not drawn: {e}")
    except Exception as e:  # noqa: BLE001  (one plot's failure must not take the matrix's tables down)
        log.exception("%s: not drawn", path)
        notes.append(f"{path.name}: not drawn (error: {type(e).__name__}: {e})")
    plt.close("all")
    return None
