"""The results as a rich table: one row per configuration and round."""

from __future__ import annotations

from rich.table import Table


def results_table(results: dict) -> Table:
    meta = results["meta"]
    table = Table(title=f"mrsa eval: {meta.get('dataset', '')} on {meta['model']} ({meta['problems']} problems)")
    for col in ("config", "round", "pass@1", "majority", "pass@N", "tokens/problem", "final acc", "wall s"):
        table.add_column(col, justify="left" if col == "config" else "right")
    for c in results["configs"]:
        for i, r in enumerate(c["rounds"]):
            last = i == len(c["rounds"]) - 1
            table.add_row(
                c["name"] if i == 0 else "", str(r["round"]), f"{r['pass1']:.3f}", f"{r['majority']:.3f}",
                f"{r['pass_n']:.3f}", f"{r['tokens']:.0f}",
                f"{c['final_accuracy']:.3f}" if last else "", f"{c['wall_s']:.0f}" if last else "",
            )
    return table


def markdown_table(results: dict) -> str:
    """The same rows as a Markdown table (for reports and the README)."""
    lines = ["| config | round | pass@1 | majority | pass@N | tokens/problem | final acc | wall s |",
             "|---|---|---|---|---|---|---|---|"]
    for c in results["configs"]:
        for i, r in enumerate(c["rounds"]):
            last = i == len(c["rounds"]) - 1
            final = f"{c['final_accuracy']:.3f}" if last else ""
            wall = f"{c['wall_s']:.0f}" if last else ""
            name = c["name"] if i == 0 else ""
            lines.append(
                f"| {name} | {r['round']} | {r['pass1']:.3f} | {r['majority']:.3f} | {r['pass_n']:.3f} | "
                f"{r['tokens']:.0f} | {final} | {wall} |"
            )
    return "\n".join(lines)
