"""The one place figures are made and saved (matplotlib without a display; PNG for the reports, PDF for
papers)."""
from __future__ import annotations

from pathlib import Path


def plt():
    """matplotlib.pyplot on the Agg backend (batch jobs have no display)."""
    import matplotlib  # lazy: heavy, matplotlib, only when plotting
    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot  # lazy: heavy, matplotlib, only when plotting
    return pyplot


def save(fig, out: Path, stem: str) -> list:
    """OUT/STEM.png and OUT/STEM.pdf; closes the figure; returns the paths."""
    paths = []
    for ext in ("png", "pdf"):
        p = Path(out) / f"{stem}.{ext}"
        fig.savefig(p, dpi=120, bbox_inches="tight")
        paths.append(p)
    plt().close(fig)
    return paths
