"""The PNG chart: throughput against fidelity to torch, one panel per length bucket."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from embedrt.runtime.errors import MissingExtraError

from .workloads import BUCKETS

CHART_FILE = "throughput-vs-fidelity.png"


def require_matplotlib() -> Any:
    """Import matplotlib with a file-only backend.

    Raises:
        MissingExtraError: the [bench] extra is not installed.
    """
    try:
        import matplotlib
    except ImportError as err:
        raise MissingExtraError("bench", "embedrt bench", "matplotlib") from err
    matplotlib.use("Agg", force=True)
    return matplotlib


def write_chart(results: dict[str, Any], out: Path) -> Path:
    """Scatter each system at (mean cosine to torch, texts/s at the largest batch size).

    A horizontal bar runs from the minimum cosine to the mean, so a low worst case shows.

    Raises:
        MissingExtraError: matplotlib is not installed.
    """
    require_matplotlib()
    import matplotlib.pyplot as plt

    batch = str(results["settings"]["batch_sizes"][-1])
    figure, axes = plt.subplots(1, len(BUCKETS), figsize=(5 * len(BUCKETS), 4.2), squeeze=False)
    for axis, bucket in zip(axes[0], BUCKETS, strict=True):
        for name, figures in results["throughput"].items():
            stats = results["quality"][name]["buckets"].get(bucket) or {}
            if not stats.get("n"):
                continue
            speed = figures[bucket][batch]["texts_per_s"]
            axis.errorbar(stats["mean"], speed, xerr=[[stats["mean"] - stats["min"]], [0]],
                          fmt="o", capsize=3)
            axis.annotate(name, (stats["mean"], speed), textcoords="offset points", xytext=(4, 4),
                          fontsize=8)
        # Without a floor, fp32's 1e-13 spread would fill the axis and hide the real gaps.
        lowest = min((results["quality"][n]["buckets"].get(bucket) or {}).get("min") or 1.0
                     for n in results["throughput"])
        axis.set_xlim(min(0.95, lowest - 0.01), 1.003)
        axis.ticklabel_format(axis="x", useOffset=False)
        tokens = results["workloads"][bucket]["token_mean"]
        axis.set_title(f"{bucket} (~{tokens:.0f} tokens), batch {batch}")
        axis.set_xlabel("cosine to torch (dot: mean, bar: down to min)")
        axis.set_ylabel("texts / s")
        axis.grid(alpha=0.3)
    ctx = results["context"]
    figure.suptitle(f"embedrt bench, {ctx['cpu']['model']}, {ctx['threads']} threads", fontsize=10)
    figure.tight_layout()
    path = out / CHART_FILE
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
