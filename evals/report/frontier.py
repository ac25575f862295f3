"""A calibration as a PNG: accuracy against mean tokens per problem, one marker per method.

Methods are grouped by kind (single and vote@k, adaptive vote, RSA, adaptive RSA); the frontier
(no method more accurate for fewer tokens) is a line through its points; each effort level's
choice is labelled; the token budgets of low, medium and high are dotted verticals.
"""

from __future__ import annotations

from pathlib import Path

_KINDS = {"vote": ("o", "vote@k / single"), "adaptive_vote": ("^", "adaptive vote"), "rsa": ("s", "RSA"),
          "adaptive_rsa": ("D", "adaptive RSA")}


def _kind(point: dict) -> str:
    method = point["fields"].get("method", "rsa")
    if method == "rsa" and point["fields"].get("rounds", 1) == 1:
        return "vote"
    return method


def plot_frontier(calibration: dict, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 6))
    colors = plt.get_cmap("tab10").colors
    points = calibration["points"]
    for ci, (kind, (marker, label)) in enumerate(_KINDS.items()):
        mine = [p for p in points if _kind(p) == kind]
        if mine:
            ax.scatter([p["tokens_mean"] for p in mine], [p["accuracy"] for p in mine], marker=marker,
                       color=colors[ci], alpha=0.6, label=label)
    front = calibration["frontier"]
    ax.plot([p["tokens_mean"] for p in front], [p["accuracy"] for p in front], "-", color="black", lw=1,
            label="frontier")
    for level, budget in calibration["budgets"].items():
        ax.axvline(budget, color="grey", ls=":", lw=0.8)
        ax.text(budget, ax.get_ylim()[0], f" {level} budget", rotation=90, va="bottom", fontsize=7, color="grey")
    levels: dict[str, list[str]] = {}  # one label per chosen point, naming every level on it
    for level, choice in calibration["efforts"].items():
        levels.setdefault(choice["name"], []).append(level)
    for i, (name, on) in enumerate(levels.items()):
        choice = calibration["efforts"][on[0]]
        ax.annotate(f"{', '.join(on)}: {name}", (choice["tokens_mean"], choice["accuracy"]), fontsize=7,
                    xytext=(6, 6 if i % 2 == 0 else -10), textcoords="offset points")
    meta = calibration["meta"]
    ax.set_xlabel("mean completion tokens per problem")
    ax.set_ylabel("final-answer accuracy")
    ax.set_title(f"{meta['model']} on {meta['dataset']}, {meta['problems']} problems (seed {meta['seed']})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
