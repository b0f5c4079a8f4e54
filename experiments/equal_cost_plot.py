"""The equal-cost report's figure: accuracy against training cost, one panel per sparsity.

Drawn by ``experiments.equal_cost`` into ``<out>/<name>.png``; the cells are its table rows.
"""

from __future__ import annotations

from experiments.aggregate import Row
from experiments.equal_cost import NOT_ONE_CYCLE, _imps, _levels, _methods, _rank, _std, one_cycle


def plot(path: str, table: list[Row]) -> None:
    """Accuracy vs total epochs and vs wall-clock: a row pair per model, a column per sparsity;
    single-cycle methods as lines over their lengths, dense dashed, IMP levels as points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({c["model"] for c in table})
    cols = max(len(_levels(table, m)) for m in models)
    fig, axes = plt.subplots(
        2 * len(models), cols, figsize=(4.2 * cols, 3.4 * 2 * len(models)), squeeze=False
    )
    for i, model in enumerate(models):
        for j in range(cols):
            for k, x in enumerate(("epochs", "wall_clock_s")):
                ax = axes[2 * i + k][j]
                levels = _levels(table, model)
                if j >= len(levels):
                    ax.set_visible(False)
                    continue
                _panel(ax, table, model, levels[j], x)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# One color per method in every panel; IMP's stars apart from them.
METHOD_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:olive", "tab:cyan", "tab:brown")
IMP_COLORS = ("tab:red", "tab:purple", "tab:pink")


def _color(table: list[Row], method: str) -> str:
    methods = sorted({c["method"] for c in table} - set(NOT_ONE_CYCLE), key=_rank)
    return METHOD_COLORS[methods.index(method) % len(METHOD_COLORS)]


def _panel(ax, table: list[Row], model: str, sparsity: float, x: str) -> None:
    err = lambda cs: [_std(c) for c in cs]
    dense = sorted(
        (c for c in table if (c["model"], c["method"]) == (model, "dense")), key=lambda c: c[x]
    )
    ax.errorbar(
        [c[x] for c in dense],
        [c["accuracy_mean"] for c in dense],
        yerr=err(dense),
        color="k",
        ls="--",
        lw=1,
        marker=".",
        label="dense",
    )
    for m in _methods(table, model):
        cs = sorted(
            (c for c in one_cycle(table, model, sparsity) if c["method"] == m), key=lambda c: c[x]
        )
        ax.errorbar(
            [c[x] for c in cs],
            [c["accuracy_mean"] for c in cs],
            yerr=err(cs),
            marker="o",
            ms=3,
            capsize=2,
            color=_color(table, m),
            label=m,
        )
    chains = sorted({c["training_epochs"] for c in _imps(table, model)})
    for imp in _imps(table, model):
        if imp["sparsity"] == sparsity:
            ax.errorbar(
                [imp[x]],
                [imp["accuracy_mean"]],
                yerr=[_std(imp)],
                marker="*",
                ms=11,
                ls="none",
                capsize=3,
                color=IMP_COLORS[chains.index(imp["training_epochs"]) % len(IMP_COLORS)],
                label=f"IMP {imp['training_epochs']:g} ep/round",
            )
    ax.set_xlabel("total training epochs" if x == "epochs" else "total wall-clock (s)")
    ax.set_ylabel("test accuracy (%)")
    mine = [c for c in table if c["model"] == model and c["sparsity"] in (0.0, sparsity)]
    short = any(c["n"] < (c.get("n_planned") or c["n"]) for c in mine)
    ax.set_title(f"{model}, sparsity {sparsity:g}" + (" (seeds missing)" * short), fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=6)
