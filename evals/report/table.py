"""The results as tables: one row per configuration and round, then the paired comparisons."""

from __future__ import annotations

from rich.table import Table

_COLUMNS = ("config", "round", "pass@1", "majority", "pass@N", "tokens/problem", "final acc", "95% CI (Wilson)",
            "final tokens")


def _interval(config: dict) -> str:
    low, high = config.get("final_interval") or (float("nan"), float("nan"))  # absent in older results
    return f"[{low:.3f}, {high:.3f}]"


def _rows(results: dict) -> list[list[str]]:
    rows = []
    for c in results["configs"]:
        for i, r in enumerate(c["rounds"]):
            last = i == len(c["rounds"]) - 1
            rows.append([
                c["name"] if i == 0 else "", str(r["round"]), f"{r['pass1']:.3f}", f"{r['majority']:.3f}",
                f"{r['pass_n']:.3f}", f"{r['tokens']:.0f}",
                f"{c['final_accuracy']:.3f}" if last else "", _interval(c) if last else "",
                f"{c['tokens_mean']:.0f}" if last else "",
            ])
    return rows


def _comparison_rows(results: dict) -> list[list[str]]:
    return [
        [f"{c['a']} - {c['b']}", str(c["n"]), f"{c['diff']:+.3f}", f"[{c['low']:+.3f}, {c['high']:+.3f}]",
         f"{c['a_only']} / {c['b_only']}", f"{c['p_value']:.3g}", "yes" if c["resolved"] else "no"]
        for c in results.get("comparisons", [])
    ]


_CMP_COLUMNS = ("A - B (final answers)", "problems", "diff", "95% CI (paired bootstrap)", "A only / B only",
                "McNemar p", "CI excludes 0")


def results_table(results: dict) -> Table:
    meta = results["meta"]
    done = meta.get("problems_done", meta["problems"])
    table = Table(title=f"mrsa eval: {meta.get('dataset', '')} on {meta['model']} ({done} problems)")
    for col in _COLUMNS:
        table.add_column(col, justify="left" if col == "config" else "right")
    for row in _rows(results):
        table.add_row(*row)
    return table


def comparisons_table(results: dict) -> Table:
    table = Table(title="paired differences of final-answer accuracy")
    for col in _CMP_COLUMNS:
        table.add_column(col, justify="left" if col.startswith("A -") else "right")
    for row in _comparison_rows(results):
        table.add_row(*row)
    return table

