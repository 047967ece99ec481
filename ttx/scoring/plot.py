"""The picture users look at first: accuracy against mean completion tokens, one line per run."""

from __future__ import annotations

from collections.abc import Sequence

from ttx.io import atomic_path


def plot_runs(runs: Sequence[dict], path: str) -> None:
    """Write a PNG: one point per scaling level (labelled with its value), one line per run,
    each run's ARISE in the legend. `runs` are evaluate_run results."""
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=120)
    spans = []
    for run in runs:
        means = [m for m in run["level_means"] if m["completion_tokens"] > 0]
        if not means:
            continue
        xs = [m["completion_tokens"] for m in means]
        ys = [m["accuracy"] for m in means]
        spans += xs
        a = run["arise"]["arise"]
        label = f"{run['name']}  (ARISE {a:+.3f})"
        (line,) = ax.plot(xs, ys, marker="o", linewidth=2, label=label)
        key = run["level_key"]
        for m, x, y in zip(means, xs, ys):
            if key and m["value"] is not None:  # long axis names are in the title already
                text = f"{key}={m['value']:g}" if len(key) <= 5 else f"{m['value']:g}"
            else:
                text = f"level {m['level']}"
            ax.annotate(text, (x, y), textcoords="offset points", xytext=(5, 6), fontsize=8,
                        color=line.get_color())
    if spans and max(spans) / max(min(spans), 1e-9) > 20:
        ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.08)
    ax.margins(x=0.08)
    ax.set_xlabel("mean completion tokens per problem (all traces)")
    ax.set_ylabel("accuracy (pred vs gold)")
    axis = next((r["level_key"] for r in runs if r["level_key"]), None)
    ax.set_title("Accuracy vs. compute per scaling level"
                 + (f" (levels: {axis})" if axis else ""))
    ax.grid(True, alpha=0.3)
    if runs:
        ax.legend(loc="best", fontsize=9, title="run (ARISE: higher = better scaling)",
                  title_fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
