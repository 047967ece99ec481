"""The picture users look at first: accuracy against mean completion tokens, one line per run."""

from __future__ import annotations

from collections.abc import Sequence

from ttx.io import atomic_path


def plot_runs(runs: Sequence[dict], path: str) -> None:
    """Write a PNG: one point per scaling level (labelled with its value) with its 95% interval
    as an error bar, one line per run, each run's ARISE in the legend. The x axis is the cost
    the runs were scored with (tokens, FLOPs or eFLOPs). `runs` are evaluate_run results."""
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=120)
    spans = []
    for run in runs:
        means = [m for m in run["level_means"] if m["cost"] > 0]
        if not means:
            continue
        xs = [m["cost"] for m in means]
        ys = [m["accuracy"] for m in means]
        cis = {row["level"]: row.get("accuracy_ci") for row in run["levels"]}
        err = [[max(0.0, y - (cis.get(m["level"]) or [y, y])[0]) for m, y in zip(means, ys)],
               [max(0.0, (cis.get(m["level"]) or [y, y])[1] - y) for m, y in zip(means, ys)]]
        spans += xs
        a = run["arise"]["arise"]
        label = f"{run['name']}  (ARISE {a:+.3f})"
        line = ax.errorbar(xs, ys, yerr=err, marker="o", linewidth=2, capsize=3, label=label,
                           alpha=0.9).lines[0]
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
    cost = next((r["cost"] for r in runs), {"kind": "tokens", "token_basis": "total"})
    ax.set_xlabel({"tokens": f"mean {cost.get('token_basis', 'total')} tokens per problem "
                             "(all traces)",
                   "flops": "mean GFLOP per problem", "kinetics": "mean G eFLOP per problem "
                   "(Kinetics)"}[cost["kind"]])
    ax.set_ylabel("accuracy (pred vs gold), 95% CI")
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
