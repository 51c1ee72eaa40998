"""Turn ``runs.csv`` into the comparison with the paper: a Markdown table, summary lines, a plot.

The paper's table (``dte_paper_{semi,unsup}_aucroc.csv``) names data sets like ``cardio``,
``magic.gamma`` or ``MVTec-AD``; our names are ADBench file stems like ``6_cardio``. They are
matched after dropping the numeric prefix and comparing lower-case letters and digits only.
CV and NLP files that are one class of a group (``MVTec-AD_bottle``, ``20news_3``) match the
group's row, which the paper reports as the average over the group's classes; such matches are
marked with a dagger in the table, since one class need not be near the group average.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Deviation allowed before a data set is flagged: max(2 * paper std, this many points).
MIN_TOLERANCE = 2.0
#: At most this many outlying data sets are named on the plot.
MAX_LABELS = 12
PAPER_FILES = {"semi": "dte_paper_semi_aucroc.csv", "unsup": "dte_paper_unsup_aucroc.csv"}


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


@dataclass(frozen=True)
class PaperMatch:
    """The paper's row for one of our data sets; ``group`` when it is a group average."""

    paper_name: str
    group: bool


def match_paper_names(ours: list[str], paper_names: list[str]) -> dict[str, PaperMatch]:
    """Map our data set names to the paper's (unmatched names are left out).

    ``"6_cardio" -> "cardio"``, ``"22_magic.gamma" -> "magic.gamma"``,
    ``"MVTec-AD_bottle" -> "MVTec-AD"`` (group), ``"20news_3" -> "20news"`` (group).
    """
    by_key = {_key(p): p for p in paper_names}
    matches: dict[str, PaperMatch] = {}
    for name in ours:
        stem = re.sub(r"^\d+_", "", name)
        if _key(stem) in by_key:
            matches[name] = PaperMatch(by_key[_key(stem)], group=False)
            continue
        group = stem.split("_", 1)[0]
        if group != stem and _key(group) in by_key:
            matches[name] = PaperMatch(by_key[_key(group)], group=True)
    return matches


def load_paper_table(reference_dir: str | Path, protocol: str):
    """The paper's AUC-ROC table (percent) for ``protocol`` as a DataFrame indexed by data set."""
    import pandas as pd

    if protocol not in PAPER_FILES:
        raise ValueError(f"protocol must be one of {tuple(PAPER_FILES)}, got {protocol!r}")
    path = Path(reference_dir) / PAPER_FILES[protocol]
    if not path.exists():
        raise ValueError(
            f"paper table {path} not found; give the folder holding {PAPER_FILES[protocol]} as reference_dir"
        )
    return pd.read_csv(path).set_index("dataset")


def default_reference_dir() -> Path | None:
    """``../shared/reference`` next to the repository, when this is a source checkout."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent.parent / "shared" / "reference"
        if (candidate / PAPER_FILES["semi"]).exists():
            return candidate
    return None


# ------------------------------------------------------------------------------ aggregation


def summarise(runs, paper, model_columns: dict[str, str | None]):
    """Per (dataset, model): our mean/std over seeds beside the paper's mean/std.

    Parameters
    ----------
    runs : DataFrame
        ``runs.csv`` rows of one protocol.
    paper : DataFrame or None
        :func:`load_paper_table` output.
    model_columns : dict
        Our model name -> the paper's column (e.g. ``"np" -> "DTE-NP"``), None when absent.

    Returns
    -------
    DataFrame with columns dataset, model, n_seeds, ours, ours_std, paper, paper_std, diff,
    tolerance, outside, group, fit_s, score_s, score_rows_per_s.
    """
    import pandas as pd

    grouped = runs.groupby(["dataset", "model"], sort=True)
    table = grouped.agg(
        n_seeds=("seed", "nunique"),
        ours=("auc_roc", "mean"),
        # the sample std over seeds, as the paper reports it (its KNN std is ours x sqrt(5/4) at ddof=0)
        ours_std=("auc_roc", lambda s: float(np.std(s, ddof=1)) if len(s) > 1 else 0.0),
        auc_pr=("auc_pr", "mean"),
        f1=("f1", "mean"),
        fit_s=("fit_s", "mean"),
        score_s=("score_s", "mean"),
        score_rows_per_s=("score_rows_per_s", "mean"),
    ).reset_index()
    matches = match_paper_names(
        sorted(table["dataset"].unique()), list(paper.index) if paper is not None else []
    )
    paper_mean, paper_std, group = [], [], []
    for dataset, model in zip(table["dataset"], table["model"], strict=False):
        column = model_columns.get(model)
        match = matches.get(dataset)
        if paper is None or match is None or column is None or column not in paper.columns:
            paper_mean.append(np.nan)
            paper_std.append(np.nan)
            group.append(False)
            continue
        paper_mean.append(float(paper.loc[match.paper_name, column]))
        std_col = f"{column}_std"
        paper_std.append(float(paper.loc[match.paper_name, std_col]) if std_col in paper.columns else np.nan)
        group.append(match.group)
    table["paper"] = paper_mean
    table["paper_std"] = paper_std
    table["group"] = group
    table["diff"] = table["ours"] - table["paper"]
    table["tolerance"] = np.maximum(2.0 * table["paper_std"].fillna(0.0), MIN_TOLERANCE)
    table["outside"] = table["diff"].abs() > table["tolerance"]
    return pd.DataFrame(table)


def _average_rank(wide) -> dict[str, float]:
    """Mean rank per column over rows with every column present (1 = highest AUC-ROC)."""
    complete = wide.dropna()
    if complete.empty:
        return {c: float("nan") for c in wide.columns}
    ranks = complete.rank(axis=1, ascending=False, method="average")
    return {c: float(ranks[c].mean()) for c in wide.columns}


def model_summary(table, model_order: list[str]) -> list[dict]:
    """One dict per model: data sets run, mean ours vs paper over the matched ones, ranks."""
    ours_wide = table.pivot(index="dataset", columns="model", values="ours")
    paper_wide = table.pivot(index="dataset", columns="model", values="paper")
    both = ours_wide.notna() & paper_wide.notna()
    # Ranks over the data sets where every model has both numbers, so they compare like with like.
    common = both.all(axis=1)
    ours_rank = _average_rank(ours_wide[common]) if len(model_order) > 1 else {m: 1.0 for m in model_order}
    paper_rank = _average_rank(paper_wide[common]) if len(model_order) > 1 else {m: 1.0 for m in model_order}
    out = []
    for model in model_order:
        if model not in ours_wide.columns:
            continue
        matched = both[model]
        rows = table[table["model"] == model]
        out.append(
            {
                "model": model,
                "n_datasets": int(ours_wide[model].notna().sum()),
                "n_matched": int(matched.sum()),
                "ours_all": float(ours_wide[model].mean()),
                "ours": float(ours_wide.loc[matched, model].mean()) if matched.any() else float("nan"),
                "paper": float(paper_wide.loc[matched, model].mean()) if matched.any() else float("nan"),
                "n_outside": int(rows["outside"][rows["paper"].notna()].sum()),
                "rank_ours": ours_rank.get(model, float("nan")),
                "rank_paper": paper_rank.get(model, float("nan")),
                "n_ranked": int(common.sum()),
                "fit_s": float(rows["fit_s"].sum()),
                "score_s": float(rows["score_s"].sum()),
            }
        )
    return out


def summary_line(s: dict, protocol: str) -> str:
    """``np (semi): mean AUC-ROC 81.23 vs paper 81.49 (-0.26) over 31 data sets; ...``."""
    diff = s["ours"] - s["paper"]
    return (
        f"{s['model']} ({protocol}): mean AUC-ROC {s['ours']:.2f} vs paper {s['paper']:.2f} ({diff:+.2f}) "
        f"over {s['n_matched']} data sets with a paper value ({s['n_datasets']} run, mean {s['ours_all']:.2f}); "
        f"{s['n_outside']} outside max(2 std, 2); average rank {s['rank_ours']:.2f} (paper {s['rank_paper']:.2f}) "
        f"among the models run over {s['n_ranked']} data sets; fit {s['fit_s']:.1f}s, score {s['score_s']:.1f}s in all"
    )


# ---------------------------------------------------------------------------------- output


def _fmt(mean: float, std: float) -> str:
    if not np.isfinite(mean):
        return "-"
    return f"{mean:.2f} ({std:.2f})" if np.isfinite(std) else f"{mean:.2f}"


def markdown_table(table, model_order: list[str], model_columns: dict[str, str | None]) -> str:
    """Rows = data sets; per model: ours mean (std), paper mean (std), difference (flag)."""
    models = [m for m in model_order if m in set(table["model"])]
    header = ["dataset"]
    for m in models:
        paper_col = model_columns.get(m) or "-"
        header += [f"{m} ours", f"paper {paper_col}", "diff"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    indexed = table.set_index(["dataset", "model"])
    for dataset in sorted(table["dataset"].unique()):
        cells = [dataset]
        for m in models:
            if (dataset, m) not in indexed.index:
                cells += ["-", "-", "-"]
                continue
            r = indexed.loc[(dataset, m)]
            cells.append(_fmt(r["ours"], r["ours_std"]))
            dagger = " †" if r["group"] else ""
            cells.append(_fmt(r["paper"], r["paper_std"]) + dagger if np.isfinite(r["paper"]) else "-")
            if np.isfinite(r["diff"]):
                cells.append(f"{r['diff']:+.2f}" + (" **!**" if r["outside"] else ""))
            else:
                cells.append("-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_plot(table, path: Path, protocol: str, model_order: list[str] | None = None) -> bool:
    """Scatter of our mean AUC-ROC against the paper's per data set, one colour per model.

    Returns False (writing nothing) when matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    shown = table[table["paper"].notna()]
    fig, ax = plt.subplots(figsize=(7.5, 7.5))
    order = model_order or sorted(shown["model"].unique())
    markers = "os^Dvx*"
    for i, model in enumerate(m for m in order if m in set(shown["model"])):
        rows = shown[shown["model"] == model]
        ax.errorbar(
            rows["paper"],
            rows["ours"],
            xerr=rows["paper_std"].fillna(0),
            yerr=rows["ours_std"].fillna(0),
            fmt=markers[i % len(markers)],
            ms=5,
            mfc="none",
            capsize=2,
            alpha=0.8,
            label=model,
        )
    # Label each outlying data set once (at its largest deviation), at most MAX_LABELS of them,
    # so the plot stays readable when many deviate; the table lists them all.
    outliers = shown[shown["outside"]].assign(abs_diff=lambda t: t["diff"].abs())
    outliers = outliers.sort_values("abs_diff", ascending=False).drop_duplicates("dataset").head(MAX_LABELS)
    for _, r in outliers.iterrows():
        ax.annotate(
            r["dataset"], (r["paper"], r["ours"]), fontsize=7, xytext=(3, -8), textcoords="offset points"
        )
    lo = float(np.nanmin(np.r_[shown["paper"], shown["ours"], 50.0])) - 2 if len(shown) else 40.0
    ax.plot([lo, 101], [lo, 101], color="grey", lw=1, ls="--", label="ours = paper")
    ax.set_xlim(lo, 101)
    ax.set_ylim(lo, 101)
    ax.set_xlabel("paper AUC-ROC (%)")
    ax.set_ylabel("dtpm_fast AUC-ROC (%)")
    ax.set_title(f"AUC-ROC per data set, {protocol} protocol (mean over seeds; largest deviations named)")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_report(out_dir: str | Path, reference_dir: str | Path | None = None) -> list[str]:
    """Write ``report.md``, ``summary.csv`` and ``aucroc_vs_paper.png`` from ``out_dir/runs.csv``.

    Returns the summary lines (one per model).
    """
    import pandas as pd

    from dtpm_fast.evaluation.models import get_model, model_names

    out_dir = Path(out_dir)
    runs_path = out_dir / "runs.csv"
    if not runs_path.exists():
        raise ValueError(f"{runs_path} does not exist; run the evaluation with this out_dir first")
    from dtpm_fast.evaluation.runner import read_runs

    read_runs(out_dir)  # checks the file, naming the line of a damaged row
    runs = pd.read_csv(runs_path)
    if runs.empty:
        raise ValueError(f"{runs_path} has no rows yet")
    protocols = runs["protocol"].unique()
    if len(protocols) != 1:
        raise ValueError(f"{runs_path} mixes protocols {list(protocols)}; one report per protocol")
    protocol = str(protocols[0])
    reference_dir = reference_dir if reference_dir is not None else default_reference_dir()
    paper = load_paper_table(reference_dir, protocol) if reference_dir is not None else None

    known = model_names()
    model_order = [m for m in known if m in set(runs["model"])] + sorted(set(runs["model"]) - set(known))
    model_columns = {m: (get_model(m).paper_column if m in known else None) for m in model_order}
    table = summarise(runs, paper, model_columns)
    summaries = model_summary(table, model_order)
    lines = [summary_line(s, protocol) for s in summaries]

    table.to_csv(out_dir / "summary.csv", index=False)
    plotted = write_plot(table, out_dir / "aucroc_vs_paper.png", protocol, model_order)
    budgets = runs.groupby("model")["budget"].first().to_dict()
    seeds = sorted(runs["seed"].unique().tolist())
    outside = table[table["outside"] & table["paper"].notna()]
    parts = [
        f"# AUC-ROC against the paper, {protocol} protocol",
        "",
        (
            f"Seeds {seeds}. AUC-ROC in percent, mean (sample std over seeds, ddof=1, as the paper). Paper values from "
            f"`{PAPER_FILES[protocol]}`; diff = ours - paper; **!** marks |diff| > max(2 x paper std, "
            f"{MIN_TOLERANCE:g}); † marks a group average in the paper (one class here)."
        ),
        "",
        "## Summary",
        "",
        *[f"- {line}" for line in lines],
        "",
        "Training budgets: "
        + ", ".join(f"{m}: {budgets[m]}" for m in model_order if budgets.get(m) not in (None, "{}"))
        if any(budgets.get(m) not in (None, "{}") for m in model_order)
        else "No trained models in this run.",
        "",
        "## Per data set",
        "",
        markdown_table(table, model_order, model_columns),
        "",
        "## Outside the tolerance",
        "",
        *(
            [
                f"- {r.dataset} / {r.model}: ours {r.ours:.2f}, paper {r.paper:.2f} (std {r.paper_std:.2f}), "
                f"diff {r.diff:+.2f}"
                for r in outside.itertuples()
            ]
            or ["- none"]
        ),
        "",
        "## Timing (mean per seed)",
        "",
        "| dataset | model | n_train | fit_s | score_s | rows/s |",
        "|---|---|---|---|---|---|",
    ]
    sizes = runs.groupby(["dataset", "model"])[["n_train"]].first()
    for r in table.itertuples():
        n_train = int(sizes.loc[(r.dataset, r.model), "n_train"])
        parts.append(
            f"| {r.dataset} | {r.model} | {n_train} | {r.fit_s:.3f} | {r.score_s:.3f} | {r.score_rows_per_s:,.0f} |"
        )
    if plotted:
        parts += ["", "![ours vs paper](aucroc_vs_paper.png)"]
    (out_dir / "report.md").write_text("\n".join(parts) + "\n")
    return lines
