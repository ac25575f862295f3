"""The results as a PNG: accuracy per round (tokens on a second axis), and accuracy per token.

Left: x = round; one colour per configuration, one line style per metric (pass@1 solid,
majority dashed, pass@N dotted); the mean cumulative tokens per problem are grey-toned bars on
the right axis. Single-round configurations (single sample, majority vote) are drawn as
horizontal reference lines across the rounds. Right: the same accuracies against the tokens
spent per problem, which is the equal-budget comparison.
"""

from __future__ import annotations

from pathlib import Path

_STYLES = {"pass1": ("-", "o", "pass@1"), "majority": ("--", "s", "majority"), "pass_n": (":", "^", "pass@N")}


def plot(results: dict, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    configs = results["configs"]
    depth = max((len(c["rounds"]) for c in configs), default=1)
    colors = plt.get_cmap("tab10").colors
    fig, (ax, ax_tok) = plt.subplots(1, 2, figsize=(13, 5.6))
    twin = ax.twinx()
    ax.set_zorder(twin.get_zorder() + 1)  # lines over the token bars
    ax.patch.set_visible(False)
    width = 0.8 / max(1, len(configs))
    for ci, c in enumerate(configs):
        color = colors[ci % len(colors)]
        rounds = [r["round"] for r in c["rounds"]]
        for metric, (ls, marker, _) in _STYLES.items():
            ys = [r[metric] for r in c["rounds"]]
            if len(rounds) == 1 and depth > 1:  # a reference level across the rounds
                ax.hlines(ys[0], 1, depth, colors=[color], linestyles=ls, alpha=0.8)
                ax.plot([1], ys, marker=marker, color=color)
            else:
                ax.plot(rounds, ys, linestyle=ls, marker=marker, color=color)
            ax_tok.plot([r["tokens"] for r in c["rounds"]], ys, linestyle=ls, marker=marker, color=color)
        offset = (ci - (len(configs) - 1) / 2) * width
        twin.bar([x + offset for x in rounds], [r["tokens"] for r in c["rounds"]], width=width,
                 color=color, alpha=0.15, edgecolor=color)
    meta = results["meta"]
    done = meta.get("problems_done", meta["problems"])  # a slice of a longer measurement
    ax.set_title(f"{meta.get('dataset', '')}: accuracy per round ({meta['model']}, {done} problems)", fontsize=10)
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy")
    ax.set_xticks(range(1, depth + 1))
    ax.set_xlim(0.5, depth + 0.5)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    twin.set_ylabel("completion tokens per problem, cumulative (bars)")
    ax_tok.set_title("accuracy vs tokens spent per problem (equal-budget view)", fontsize=10)
    ax_tok.set_xlabel("completion tokens per problem (through the round)")
    ax_tok.set_ylabel("accuracy")
    ax_tok.set_ylim(-0.02, 1.02)
    ax_tok.grid(alpha=0.3)
    handles = [Patch(color=colors[i % len(colors)], label=c["name"]) for i, c in enumerate(configs)]
    handles += [Line2D([], [], color="black", linestyle=ls, marker=m, label=label) for ls, m, label in _STYLES.values()]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
