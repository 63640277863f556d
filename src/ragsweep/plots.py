"""The report's figures, as PNG data URIs (embedded: the HTML report needs no network and no files)."""

from __future__ import annotations

import base64
import io
import math

import matplotlib

matplotlib.use("Agg")  # no display on a GPU box over SSH
import matplotlib.pyplot as plt  # noqa: E402

plt.rcParams["text.parse_math"] = False  # model names and user text are labels, never mathtext: '$\\bad$' must not crash a report


def figure_uri(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def heatmap(values: dict[tuple[str, str], float], metric: str, spreads: dict[tuple[str, str], float] | None = None) -> str:
    """LLM (rows) × embedding model (columns), each cell annotated with its value and ± half its 95 % interval."""
    spreads = spreads or {}
    llms = sorted({llm for _, llm in values})
    retrievers = sorted({retriever for retriever, _ in values})
    grid = [[values.get((r, llm), math.nan) for r in retrievers] for llm in llms]
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(retrievers), 1.0 + 0.6 * len(llms)))
    image = ax.imshow(
        grid,
        cmap="viridis",
        vmin=0.0,
        vmax=max(1.0, max((v for row in grid for v in row if not math.isnan(v)), default=1.0)),
        aspect="auto",
    )
    ax.set_xticks(range(len(retrievers)), retrievers, rotation=20, ha="right")
    ax.set_yticks(range(len(llms)), llms)
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            spread = spreads.get((retrievers[j], llms[i]))
            text = "NaN" if math.isnan(value) else f"{value:.2f}" + (f"\n±{spread:.2f}" if spread is not None else "")
            ax.text(j, i, text, ha="center", va="center", color="white" if math.isnan(value) or value < 0.6 else "black", fontsize=10)
    ax.set_title(metric)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return figure_uri(fig)


def tradeoff(points: list[dict], x_key: str, x_label: str, quality_label: str, pareto: set[int]) -> str:
    """Quality against a cost or speed axis; Pareto-best combinations in red and labelled."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for index, point in enumerate(points):
        best = index in pareto
        ax.scatter(point[x_key], point["quality"], s=70 if best else 40, color="tab:red" if best else "tab:blue", zorder=3)
        ax.annotate(
            point["label"],
            (point[x_key], point["quality"]),
            fontsize=8,
            xytext=(5, 4),
            textcoords="offset points",
            fontweight="bold" if best else "normal",
        )
    ax.set_xlabel(x_label)
    ax.set_ylabel(quality_label)
    ax.grid(alpha=0.3)
    ax.set_title(f"{quality_label} vs {x_label} (red: Pareto-best)")
    return figure_uri(fig)


def memory_timeline(
    points: list[tuple[float, float, str]],
    marks: list[tuple[float, str, str]],
    budget_gb: float | None,
    baseline_gb: float | None,
    source: str,
    spans: list[tuple[float, float, str]] = (),
) -> str:
    """In-use memory over the run; load (green) and unload (grey) marks; the budget line; shaded spans for the stages that
    ran at once (generation, and a judge working beside it)."""
    fig, ax = plt.subplots(figsize=(9, 3.8))
    for (start, end, label), color in zip(spans, ("tab:cyan", "tab:pink", "tab:olive"), strict=False):
        ax.axvspan(start, end, color=color, alpha=0.15, label=label)
    ax.plot([t for t, _, _ in points], [gb for _, gb, _ in points], marker="o", markersize=3, linewidth=1.5, color="tab:blue", label=source)
    for t, kind, model in marks:
        ax.axvline(t, color="tab:green" if kind == "load" else "0.6", linestyle="--", linewidth=0.8)
        if kind == "load":  # labels along the top edge, clear of the data
            ax.text(
                t, 0.98, f" {model}", rotation=90, fontsize=7, va="top", ha="right", color="tab:green", transform=ax.get_xaxis_transform()
            )
    if budget_gb is not None:
        ax.axhline(budget_gb, color="tab:red", linewidth=1.2, label=f"pressure threshold {budget_gb:.1f} GB")
    if baseline_gb is not None:
        ax.axhline(baseline_gb, color="tab:orange", linewidth=1, linestyle=":", label=f"baseline target {baseline_gb:.1f} GB")
    ax.set_xlabel("seconds since the run started")
    ax.set_ylabel("GB in use")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    return figure_uri(fig)


def load_times(loads: list[tuple[str, float]]) -> str:
    fig, ax = plt.subplots(figsize=(6.5, 0.8 + 0.4 * len(loads)))
    ax.barh([name for name, _ in loads], [seconds for _, seconds in loads], color="tab:purple")
    for i, (_, seconds) in enumerate(loads):
        ax.text(seconds, i, f" {seconds:.2f} s", va="center", fontsize=8)
    ax.set_xlabel("load time (s)")
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    return figure_uri(fig)


def pareto_front(points: list[dict], x_key: str, higher_x_is_better: bool) -> set[int]:
    """Indexes of the points no other point beats on both quality and x."""
    best = set()
    for i, p in enumerate(points):
        if any(p[k] is None or (isinstance(p[k], float) and math.isnan(p[k])) for k in ("quality", x_key)):
            continue
        dominated = False
        for j, q in enumerate(points):
            if i == j or any(q[k] is None or (isinstance(q[k], float) and math.isnan(q[k])) for k in ("quality", x_key)):
                continue
            x_better = q[x_key] >= p[x_key] if higher_x_is_better else q[x_key] <= p[x_key]
            strictly = q["quality"] > p["quality"] or (q[x_key] > p[x_key] if higher_x_is_better else q[x_key] < p[x_key])
            if q["quality"] >= p["quality"] and x_better and strictly:
                dominated = True
                break
        if not dominated:
            best.add(i)
    return best
