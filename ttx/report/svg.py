"""The accuracy-vs-cost picture as inline SVG: the same points as `ttx score --plot` (each run's
level_means, each level's 95% interval from its row), drawn without matplotlib."""

from __future__ import annotations

import math
from collections.abc import Sequence

from ttx.report.safe import escape

PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
           "#ff9da7", "#9c755f", "#bab0ac")
W, H = 900, 420                        # whole picture
L, R, T, B = 64, 250, 34, 54           # margins; the legend sits in the right one


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _nice_step(span: float, ticks: int = 6) -> float:
    raw = span / max(ticks, 1)
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def linear_ticks(lo: float, hi: float) -> list[float]:
    step = _nice_step(hi - lo)
    start = math.ceil(lo / step - 1e-9) * step
    out, x = [], start
    while x <= hi + 1e-9 * step:
        out.append(round(x, 12))
        x += step
    return out


def log_ticks(lo: float, hi: float) -> list[float]:
    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    mults = (1,) if hi / lo > 1e3 else (1, 2, 5)
    return [m * 10 ** d for d in decades for m in mults if lo <= m * 10 ** d <= hi]


def _fmt(x: float) -> str:
    if x == 0:
        return "0"
    if abs(x) >= 1e6 or abs(x) < 1e-3:
        return f"{x:.0e}".replace("e+0", "e").replace("e-0", "e-")
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:g}"


def x_label(cost: dict) -> str:
    """The x axis of ttx.scoring.plot.plot_runs."""
    return {"tokens": f"mean {cost.get('token_basis', 'total')} tokens per problem (all traces)",
            "flops": "mean GFLOP per problem",
            "kinetics": "mean G eFLOP per problem (Kinetics)"}.get(cost.get("kind"), "cost")


def accuracy_cost_svg(runs: Sequence[dict], names: Sequence[str]) -> str:
    """`runs`: score's runs; `names`: the run names in the order that fixes their colours."""
    series = []
    for run in runs:
        means = [m for m in run["level_means"] if m["cost"] and m["cost"] > 0]
        cis = {row["level"]: row.get("accuracy_ci") for row in run["levels"]}
        series.append((run, means, cis))
    xs = [m["cost"] for _, means, _ in series for m in means]
    if not xs:
        return '<p class="muted">No level has a cost above 0: nothing to plot.</p>'
    lo, hi = min(xs), max(xs)
    log = hi / max(lo, 1e-12) > 20                 # as plot_runs
    if log:
        lo, hi = lo / 1.3, hi * 1.3
        fx = lambda x: (math.log10(x) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))
        ticks = log_ticks(lo, hi)
    else:
        pad = (hi - lo) * 0.08 or max(hi * 0.1, 1.0)
        lo, hi = max(0.0, lo - pad), hi + pad
        fx = lambda x: (x - lo) / (hi - lo)
        ticks = linear_ticks(lo, hi)
    pw, ph = W - L - R, H - T - B
    px = lambda x: L + fx(x) * pw
    py = lambda y: T + (1.0 - (y + 0.02) / 1.10) * ph     # y from -0.02 to 1.08, as plot_runs
    axis = next((r["level_key"] for r in runs if r["level_key"]), None)
    cost = next((r["cost"] for r in runs), {"kind": "tokens"})
    out = [f'<svg class="plot" viewBox="0 0 {W} {H}" '
           f'width="{W}" height="{H}" role="img" aria-label="accuracy vs cost per level">',
           f'<text x="{L}" y="20" class="title">Accuracy vs. compute per scaling level'
           f'{escape(f" (levels: {axis})") if axis else ""}</text>']
    for y in (0, 0.2, 0.4, 0.6, 0.8, 1.0):
        out.append(f'<line class="grid" x1="{L}" x2="{L + pw}" y1="{py(y):.1f}" y2="{py(y):.1f}"/>'
                   f'<text class="tick" x="{L - 6}" y="{py(y) + 4:.1f}" text-anchor="end">'
                   f'{y:.0%}</text>')
    for t in ticks:
        out.append(f'<line class="grid" x1="{px(t):.1f}" x2="{px(t):.1f}" y1="{T}" y2="{T + ph}"/>'
                   f'<text class="tick" x="{px(t):.1f}" y="{T + ph + 16}" text-anchor="middle">'
                   f'{_fmt(t)}</text>')
    out.append(f'<rect class="frame" x="{L}" y="{T}" width="{pw}" height="{ph}"/>')
    out.append(f'<text class="axis" x="{L + pw / 2:.0f}" y="{H - 12}" text-anchor="middle">'
               f'{escape(x_label(cost))}{" (log scale)" if log else ""}</text>')
    out.append(f'<text class="axis" transform="translate(16 {T + ph / 2:.0f}) rotate(-90)" '
               'text-anchor="middle">accuracy (pred vs gold), 95% CI</text>')
    for run, means, cis in series:
        c = color(list(names).index(run["name"]))
        pts = [(px(m["cost"]), py(m["accuracy"]), m) for m in means]
        if len(pts) > 1:
            out.append(f'<polyline class="line" stroke="{c}" points="'
                       + " ".join(f"{x:.1f},{y:.1f}" for x, y, _ in pts) + '"/>')
        for x, y, m in pts:
            ci = cis.get(m["level"])
            key = run["level_key"]
            label = (f"{key}={m['value']:g}" if key and m.get("value") is not None
                     else f"level {m['level']}")
            tip = (f"{run['name']} · {label}: accuracy {m['accuracy']:.3f}"
                   + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
                   + f", cost {m['cost']:,.1f}, {m['n_problems']} problems")
            out.append(f'<g class="point" data-run="{escape(run["name"])}" '
                       f'data-level="{m["level"]}"><title>{escape(tip)}</title>')
            if ci:
                y0, y1 = py(ci[0]), py(ci[1])
                out.append(f'<line class="ci" stroke="{c}" x1="{x:.1f}" x2="{x:.1f}" '
                           f'y1="{y0:.1f}" y2="{y1:.1f}"/><line class="ci" stroke="{c}" '
                           f'x1="{x - 4:.1f}" x2="{x + 4:.1f}" y1="{y0:.1f}" y2="{y0:.1f}"/>'
                           f'<line class="ci" stroke="{c}" x1="{x - 4:.1f}" x2="{x + 4:.1f}" '
                           f'y1="{y1:.1f}" y2="{y1:.1f}"/>')
            short = f"{m['value']:g}" if key and m.get("value") is not None and len(key) > 5 \
                else label
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4.5" fill="{c}"/>'
                       f'<text class="label" fill="{c}" x="{x + 6:.1f}" y="{y - 7:.1f}">'
                       f'{escape(short)}</text></g>')
    lx = L + pw + 18
    out.append(f'<text class="legend-title" x="{lx}" y="{T + 4}">run (ARISE: higher = better '
               'scaling)</text>')
    for j, run in enumerate(runs):
        c = color(list(names).index(run["name"]))
        y = T + 24 + 20 * j
        name = run["name"] if len(run["name"]) <= 22 else run["name"][:21] + "…"
        arise = (f'{run["arise"]["arise"]:+.3f}' if run["arise"]["n_levels"] > 1 else "1 level")
        out.append(f'<g class="legend"><line x1="{lx}" x2="{lx + 18}" y1="{y - 4}" y2="{y - 4}" '
                   f'stroke="{c}" stroke-width="3"/><text x="{lx + 24}" y="{y}">'
                   f'{escape(name)} ({arise})</text></g>')
    out.append("</svg>")
    return "".join(out)
