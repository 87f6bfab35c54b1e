"""A pipeline's report: the test metrics of the recommenders it compares
(mean ± std over seeds), every stage's training curve, and the comparison as
a chart.

The ``report`` section of a pipeline config::

    report:
      title: LLM2Rec on MovieLens-100k
      compare:                     # seqrec stages, in the order of the table
        - {label: SASRec (ID only), stage: sasrec_id}
        - {label: SASRec on LLM2Rec embeddings, stage: sasrec_llm2rec}
      metrics: [recall@10, ndcg@10, recall@20, ndcg@20]   # the default
      protocol: full               # or sampled (when the stages evaluate it)
      groups: [by_popularity, by_history_length]   # optional: per-group tables and chart
      hit_ratio: false             # true: call Recall@K HR@K (the same number with one target)
      shuffle: false               # true: the shuffle diagnostics (stages tested with evaluation.shuffle)
      slices: [held-out cold items, tail]   # optional: popularity groups shown beside the overall figures
      probe: false                 # true: a linear probe of each LLM row's frozen matrix against the ID row

Compared stages are seqrec or llmsrec stages. Written into the pipeline
directory: ``results.json``, ``results.md``, ``training_curves.png``,
``metrics.png``, with ``slices`` ``slices.png`` (overall and each slice side
by side, the first metric), with ``groups`` ``groups.png`` (the first metric per group,
each compared model side by side) and with ``shuffle`` ``shuffle.png`` (the
cosine between each user's vector from the original and from the shuffled
history, and the relative drop of the first metric, per model).
"""

from __future__ import annotations

import dataclasses
import io
import math

import numpy as np
from flax import traverse_util

from jaxrec import runs
from jaxrec.config import build
from jaxrec.errors import ConfigError
from jaxrec.io import write_bytes_atomic, write_json_atomic
from jaxrec.seqrec.evaluate import COLD_GROUP
from jaxrec.registry import TASKS


@dataclasses.dataclass
class Compared:
    label: str
    stage: str


@dataclasses.dataclass
class ReportSpec:
    title: str = "results"
    compare: list[Compared] = dataclasses.field(default_factory=list)
    metrics: list[str] = dataclasses.field(default_factory=lambda: ["recall@10", "ndcg@10", "recall@20", "ndcg@20"])
    protocol: str = "full"
    groups: list[str] = dataclasses.field(default_factory=list)
    """Test-metric groups to tabulate: by_popularity (target item), by_history_length (user)."""
    hit_ratio: bool = False
    """Name Recall@K "HR@K" (with one target they are the same number)."""
    shuffle: bool = False
    """Tabulate the shuffle test: the metrics on randomly permuted test histories, their drop, and the cosine
    between user vectors from the original and the shuffled histories."""
    slices: list[str] = dataclasses.field(default_factory=list)
    """Target-item popularity groups (by_popularity names: 'held-out cold items' with data.cold_items,
    'tail', 'popular', ...) tabulated beside the overall metrics, each model's row in one table."""
    probe: bool = False
    """A linear probe of every LLM row's frozen matrix (as its adapter reads it) against the first ID
    row's item vectors and the items' log training counts, beside a Gaussian floor and, with several
    ID seeds, another seed's ID vectors as a ceiling (see jaxrec.seqrec.probe)."""

    def __post_init__(self):
        unknown = set(self.groups) - set(GROUP_KINDS)
        if unknown:
            raise ValueError(f"groups: unknown {sorted(unknown)}; choose from {list(GROUP_KINDS)}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        unknown = set(self.slices) - set(SLICES)
        if unknown:
            raise ValueError(f"slices: unknown {sorted(unknown)}; choose from {list(SLICES)}")


GROUP_KINDS = {"by_popularity": "target item's training interactions", "by_history_length": "user's earlier interactions"}
PROTOCOLS = ("full", "sampled")
SLICES = (COLD_GROUP, "tail", "popular", "cold")
"""Popularity groups a report can show beside the overall figures ('cold': the least popular share
of evaluation.cold_share; the held-out ones need data.cold_items)."""


def report_spec(pipeline) -> ReportSpec:
    try:
        spec = build(ReportSpec, pipeline.report, prefix="report.")
    except ConfigError as err:
        raise ConfigError(f"{pipeline.path}: {err}") from None
    comparable = [name for name, task in TASKS.items() if task.tests_recommender]
    for entry in spec.compare:
        if entry.stage not in pipeline.stages:
            raise ConfigError(f"{pipeline.path}: report.compare: no stage {entry.stage!r}")
        if pipeline.stages[entry.stage].task not in comparable:
            raise ConfigError(f"{pipeline.path}: report.compare: stage {entry.stage} is a "
                              f"{pipeline.stages[entry.stage].task} stage; compare {' or '.join(comparable)} stages")
    return spec


def _cell(value: dict | None, seeds: int) -> str:
    if value is None:
        return "-"
    return f"{value['mean']:.4f}" + (f" ± {value['std']:.4f}" if seeds > 1 else "")


def _over_seeds(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "std": float(np.std(values))}


def _group_results(tested: runs.RecommenderResults, spec: ReportSpec) -> dict:
    """kind -> group -> {"users", protocol -> metric -> mean/std over seeds}, for
    the groups present in every seed (popularity groups can differ by seed only
    in which are empty)."""
    out = {}
    for kind in spec.groups:
        per_seed = [r.groups(kind) for r in tested.per_seed]
        names = [g for g in per_seed[0] if all(g in seed for seed in per_seed)]
        out[kind] = {}
        for name in names:
            entry = {"users": per_seed[0][name]["users"]}
            for protocol in PROTOCOLS:
                if protocol in per_seed[0][name]:
                    entry[protocol] = {m: _over_seeds([s[name][protocol][m] for s in per_seed]) for m in spec.metrics}
            out[kind][name] = entry
    return out


def _shuffle_results(tested: runs.RecommenderResults, spec: ReportSpec, stage: str) -> dict:
    """The shuffled-history metrics (report protocol) and the original-vs-shuffled cosine, over seeds."""
    shuffled = [r.shuffled for r in tested.per_seed]
    if not all(spec.protocol in s for s in shuffled):
        raise ConfigError(f"report.shuffle: stage {stage} was not tested on shuffled histories under the "
                          f"{spec.protocol} protocol; set its evaluation.shuffle: true")
    return {"metrics": {m: _over_seeds([s[spec.protocol][m] for s in shuffled]) for m in spec.metrics},
            "cosine": _over_seeds([s["cosine_to_original"] for s in shuffled])}


def _slice_results(tested: runs.RecommenderResults, spec: ReportSpec, stage: str) -> dict:
    """slice -> {"users", metric -> mean/std over seeds (None: no test user's target is in it)}
    under the report's protocol."""
    out = {}
    for name in spec.slices:
        per_seed = [r.groups("by_popularity").get(name) for r in tested.per_seed]
        if any(group is None for group in per_seed):  # groups without test users are left out
            out[name] = {"users": 0, **{m: None for m in spec.metrics}}
            continue
        if any(spec.protocol not in group for group in per_seed):
            raise ConfigError(f"report.slices: stage {stage} was not tested under the {spec.protocol} protocol")
        out[name] = {"users": per_seed[0]["users"],
                     **{m: _over_seeds([g[spec.protocol][m] for g in per_seed]) for m in spec.metrics}}
    return out


SETTING_SECTIONS = ("recommender", "optimizer", "loop", "batch", "evaluation", "data")


def settings(pipeline, spec: ReportSpec) -> dict:
    """The compared stages' configured settings: those every row shares, and per row those that differ
    (so a reader sees that ID and LLM rows trained alike, or exactly how not)."""
    flats = []
    for entry in spec.compare:
        tree = pipeline.stages[entry.stage].tree
        flats.append(traverse_util.flatten_dict({k: tree[k] for k in SETTING_SECTIONS if isinstance(tree.get(k), dict)},
                                                sep="."))
    keys = sorted(set().union(*flats)) if flats else []
    shared = {k: flats[0][k] for k in keys if all(k in f and f[k] == flats[0][k] for f in flats)}
    differing = [{k: f[k] for k in keys if k in f and k not in shared} for f in flats]
    return {"shared": shared, "per_row": differing}


def _probe_results(pipeline, spec: ReportSpec, tested: dict[str, runs.RecommenderResults]) -> dict:
    """The probe table: rows of {"label", "id_vectors_r2", "log_count_r2", ...}, and what it was measured
    on; ``tested``: each compared stage's results, as :func:`results` read them."""
    from jaxrec.pipelines.config import stage_config
    from jaxrec.seqrec.probe import gaussian_matrix
    from jaxrec.tasks.seqrec import frozen_item_table, id_probe_targets

    configs = {e.stage: stage_config(pipeline, e.stage) for e in spec.compare}
    seqrec = [e for e in spec.compare if configs[e.stage].task == "seqrec"]
    id_rows = [e for e in seqrec if not configs[e.stage].recommender.items.uses_llm]
    if not id_rows:
        raise ConfigError(f"{pipeline.path}: report.probe needs an ID row (a seqrec stage with recommender.items.kind: id) "
                          "among report.compare to probe against")
    against, seeds = id_rows[0], tested[id_rows[0].stage].seeds
    id_config, id_run = configs[against.stage], pipeline.stages[against.stage].run_dir
    data, targets = id_probe_targets(id_config, id_run, seeds[0])
    item_ids = [str(i) for i in data.item_ids]
    rows, scored, width = [], {}, None
    for entry in seqrec:
        items = configs[entry.stage].recommender.items
        if not items.uses_llm:
            continue
        if configs[entry.stage].data != id_config.data:
            raise ConfigError(f"{pipeline.path}: report.probe: stage {entry.stage} reads other data than the ID row "
                              f"{against.stage}; probe rows of one dataset")
        key = (items.embeddings, items.conditioning, items.pca)  # what the matrix depends on
        if key not in scored:
            matrix = frozen_item_table(items, item_ids)
            scored[key], width = targets.score(matrix), matrix.shape[1]
        rows.append({"label": entry.label, **scored[key]})
    if width is not None:
        rows.append({"label": f"Gaussian noise, {width} wide (the floor)",
                     **targets.score(gaussian_matrix(len(item_ids), width))})
    if len(seeds) > 1:
        rows.append({"label": f"{against.label}: the ID vectors of seed {seeds[1]} (the ceiling)",
                     **targets.score(runs.item_table(id_run, item_ids, seeds[1]))})
    return {"against": against.label, "seed": seeds[0], "items": int(len(targets.items)), "rows": rows}


def results(pipeline, spec: ReportSpec) -> dict:
    rows, opened = [], {}
    for entry in spec.compare:
        run_dir = pipeline.stages[entry.stage].run_dir
        tested = opened[entry.stage] = runs.recommender_results(run_dir)
        over = tested.over_seeds.get(spec.protocol)
        if over is None:
            raise ConfigError(f"report.protocol {spec.protocol}: stage {entry.stage} did not evaluate it "
                              f"(it has {', '.join(tested.protocols)})")
        rows.append({"label": entry.label, "stage": entry.stage, "run_dir": str(run_dir), "seeds": tested.seeds,
                     "metrics": {m: over.get(m) for m in spec.metrics},
                     "per_seed": [{"seed": r.seed, **{m: r.metrics(spec.protocol).get(m) for m in spec.metrics}}
                                  for r in tested.per_seed],
                     "groups": _group_results(tested, spec)})
        if spec.shuffle:
            rows[-1]["shuffled"] = _shuffle_results(tested, spec, entry.stage)
        if spec.slices:
            rows[-1]["slices"] = _slice_results(tested, spec, entry.stage)
    configured = settings(pipeline, spec)
    for row, differing in zip(rows, configured["per_row"]):
        row["settings"] = differing
    table = {"title": spec.title, "protocol": spec.protocol, "metrics": spec.metrics, "rows": rows,
             "groups": spec.groups, "hit_ratio": spec.hit_ratio, "shuffle": spec.shuffle, "slices": spec.slices,
             "settings": configured["shared"]}
    if spec.probe:
        table["probe"] = _probe_results(pipeline, spec, opened)
    return table


def metric_name(metric: str, hit_ratio: bool = False) -> str:
    return metric.replace("recall", "HR" if hit_ratio else "Recall").replace("ndcg", "NDCG")


def _protocol_text(protocol: str) -> str:
    return "full ranking over every item" if protocol == "full" else "the target against sampled negatives never among the user's items"


def _group_tables(table: dict) -> list[str]:
    """Per group kind and protocol: one row per group, the compared models' metrics side by side."""
    lines, rows, metrics = [], table["rows"], table["metrics"]
    name = lambda m: metric_name(m, table.get("hit_ratio", False))
    for kind in table.get("groups", []):
        groups = list(rows[0]["groups"][kind]) if rows else []
        protocols = [table["protocol"]] + [p for p in PROTOCOLS if p != table["protocol"]]
        for protocol in protocols:
            if not all(protocol in rows[0]["groups"][kind][g] for g in groups):
                continue
            lines += ["", f"### {kind.replace('_', ' ')} ({GROUP_KINDS[kind]}), {_protocol_text(protocol)}", "",
                      "| group | users | " + " | ".join(f"{r['label']}: {name(m)}" for r in rows for m in metrics) + " |",
                      "|---|---|" + "---|" * (len(rows) * len(metrics))]
            for group in groups:
                cells = []
                for r in rows:
                    entry = r["groups"][kind].get(group, {}).get(protocol, {})
                    cells += [_cell(entry.get(m), len(r["seeds"])) for m in metrics]
                lines.append(f"| {group} | {rows[0]['groups'][kind][group]['users']} | " + " | ".join(cells) + " |")
    return lines


def _drop(original: dict | None, shuffled: dict | None) -> float | None:
    """Relative change (%) from the original to the shuffled histories' mean."""
    if not original or not shuffled or not original["mean"]:
        return None
    return 100.0 * (shuffled["mean"] - original["mean"]) / original["mean"]


def _shuffle_table(table: dict) -> list[str]:
    if not table.get("shuffle"):
        return []
    rows, metrics = table["rows"], table["metrics"]
    name = lambda m: metric_name(m, table.get("hit_ratio", False))
    lines = ["", f"### Shuffled test histories ({_protocol_text(table['protocol'])})", "",
             "Each test history randomly permuted (the same negatives); change is relative to the original "
             "order; cosine: between a user's vector from the original and from the shuffled history.", "",
             "| | " + " | ".join(f"{name(m)} shuffled | change" for m in metrics) + " | cosine |",
             "|---|" + "---|---|" * len(metrics) + "---|"]
    for row in rows:
        cells = []
        for m in metrics:
            drop = _drop(row["metrics"][m], row["shuffled"]["metrics"][m])
            cells += [_cell(row["shuffled"]["metrics"][m], len(row["seeds"])), "-" if drop is None else f"{drop:+.1f}%"]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + f" | {_cell(row['shuffled']['cosine'], len(row['seeds']))} |")
    return lines


def _settings_lines(table: dict) -> list[str]:
    shared = table.get("settings")
    if not shared:
        return []
    text = lambda settings: ", ".join(f"{k} {v}" for k, v in settings.items())
    lines = ["Every row trained and tested with: " + text(shared) + ".", ""]
    differing = [(r["label"], r["settings"]) for r in table["rows"] if r.get("settings")]
    if differing:
        lines += ["Rows differ only in:", ""] + [f"- {label}: {text(s)}" for label, s in differing] + [""]
    return lines


def _slice_table(table: dict) -> list[str]:
    slices, rows, metrics = table.get("slices") or [], table["rows"], table["metrics"]
    if not slices:
        return []
    name = lambda m: metric_name(m, table.get("hit_ratio", False))
    users = ", ".join(f"{s}: {rows[0]['slices'][s]['users']}" for s in slices)
    lines = ["", f"### Overall and by target item ({_protocol_text(table['protocol'])})", "",
             f"Test users whose target is in each slice: {users}.", "",
             "| | " + " | ".join(f"{part} {name(m)}" for part in ("overall", *slices) for m in metrics[:2]) + " |",
             "|---|" + "---|" * (len(metrics[:2]) * (1 + len(slices)))]
    for row in rows:
        cells = [_cell(row["metrics"][m], len(row["seeds"])) for m in metrics[:2]]
        cells += [_cell(row["slices"][s][m], len(row["seeds"])) for s in slices for m in metrics[:2]]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    return lines


def _probe_table(table: dict) -> list[str]:
    probe = table.get("probe")
    if not probe:
        return []
    lines = ["", "### What the frozen item vectors hold (linear probe)", "",
             f"Ridge regressions from each row's frozen matrix, as its adapter reads it, onto the item vectors of "
             f"{probe['against']} (seed {probe['seed']}) and onto the items' log training counts; R² on held-out "
             f"items, 5-fold over the {probe['items']} items it trained on. A linear adapter cannot give an item "
             "more than its row holds: near the floor, the row is a code without content.", "",
             "| | R² of the ID item vectors | R² of log training count |", "|---|---|---|"]
    for row in probe["rows"]:
        lines.append(f"| {row['label']} | {row['id_vectors_r2']:.3f} | {row['log_count_r2']:.3f} |")
    return lines


def markdown(table: dict, stages: list[dict]) -> str:
    metrics = table["metrics"]
    seeds = max((len(r["seeds"]) for r in table["rows"]), default=1)
    lines = [f"# {table['title']}", "",
             f"Test split, {_protocol_text(table['protocol'])}"
             + (f"; mean ± std over {seeds} seeds" if seeds > 1 else "")
             + "; a target tied with other items counts at its expected place under random tie-breaking.", "",
             *_settings_lines(table),
             "| | " + " | ".join(metric_name(m, table.get("hit_ratio", False)) for m in metrics) + " |",
             "|---|" + "---|" * len(metrics)]
    for row in table["rows"]:
        lines.append(f"| {row['label']} | " + " | ".join(_cell(row["metrics"][m], len(row["seeds"])) for m in metrics)
                     + " |")
    lines += _slice_table(table)
    lines += _probe_table(table)
    lines += _shuffle_table(table)
    lines += _group_tables(table)
    lines += ["", "Stages:", "", "| stage | task | this launch | seconds | run directory |", "|---|---|---|---|---|"]
    for stage in stages:
        lines.append(f"| {stage['name']} | {stage['task']} | {stage['status']} | {stage.get('seconds', '')} | "
                     f"`{stage['run_dir']}` |")
    return "\n".join(lines) + "\n"


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def training_curves_png(curves: dict[str, dict[str, list[dict]]]) -> bytes | None:
    """:func:`training_curves_figure` as PNG bytes (None when no stage trained)."""
    figure = training_curves_figure(curves)
    return None if figure is None else _png(figure)


def _plot_series(ax, steps: list, values: list, *style, **options) -> None:
    """One curve, with markers when it is too short for its line to show (a
    stage that logged its loss once would otherwise draw an empty panel)."""
    markers = {"marker": "o", "markersize": 4} if len(steps) < 3 else {}
    ax.plot(steps, values, *style, **options, **markers)


def training_curves_figure(curves: dict[str, dict[str, list[dict]]]):
    """One panel per stage that trained: training loss by step, and the
    validation monitor when the stage validated."""
    from matplotlib.figure import Figure

    stages = {name: c for name, c in curves.items() if any(r.get("split") == "train" for rows in c.values() for r in rows)}
    if not stages:
        return None
    columns = min(3, len(stages))
    rows_n = math.ceil(len(stages) / columns)
    figure = Figure(figsize=(4.6 * columns, 3.2 * rows_n), layout="constrained")
    axes = figure.subplots(rows_n, columns, squeeze=False).ravel()
    for ax, (name, by_seed) in zip(axes, stages.items()):
        validation_axis = None
        for seed, rows in by_seed.items():
            train = [(r["step"], r["loss"]) for r in rows if r.get("split") == "train" and "loss" in r]
            if train:
                _plot_series(ax, *zip(*train), lw=1.2, label=f"train loss {seed}".strip())
            valid = [r for r in rows if r.get("split") == "validation"]
            key = next((k for k in ("recall@20", "recall@10", "loss") if valid and k in valid[0]), None)
            if key:
                validation_axis = validation_axis or ax.twinx()
                _plot_series(validation_axis, [r["step"] for r in valid], [r[key] for r in valid], "--",
                             lw=1.2, color="tab:red", alpha=0.7)
                validation_axis.set_ylabel(f"validation {key}", color="tab:red")
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
    for ax in axes[len(stages):]:
        ax.set_visible(False)
    return figure


def metrics_png(table: dict) -> bytes:
    """Grouped bars: one group per metric, one bar per compared model, ± std."""
    from matplotlib.figure import Figure

    metrics, rows = table["metrics"], table["rows"]
    figure = Figure(figsize=(1.6 + 1.9 * len(metrics), 3.8), layout="constrained")
    ax = figure.subplots()
    width = 0.8 / max(len(rows), 1)
    for i, row in enumerate(rows):
        xs = [m + (i - (len(rows) - 1) / 2) * width for m in range(len(metrics))]
        means = [(row["metrics"][m] or {}).get("mean", 0.0) for m in metrics]
        stds = [(row["metrics"][m] or {}).get("std", 0.0) for m in metrics]
        ax.bar(xs, means, width, yerr=stds, capsize=3, label=row["label"])
    ax.set_xticks(range(len(metrics)), [metric_name(m, table.get("hit_ratio", False)) for m in metrics])
    ax.set_ylabel(f"test ({table['protocol']} ranking)")
    ax.set_title(table["title"])
    ax.legend(fontsize=8, loc="upper left")
    return _png(figure)


def slices_png(table: dict) -> bytes | None:
    """Overall and each slice side by side: the first metric, one bar per model, ± std."""
    from matplotlib.figure import Figure

    slices, rows = table.get("slices") or [], table["rows"]
    if not slices or not rows:
        return None
    metric = table["metrics"][0]
    parts = ["overall", *slices]
    figure = Figure(figsize=(3.2 * len(parts) + 1.5, 3.9), layout="constrained")
    axes = figure.subplots(1, len(parts), squeeze=False).ravel()
    for ax, part in zip(axes, parts):
        values = [(r["metrics"][metric] if part == "overall" else r["slices"][part][metric]) or {} for r in rows]
        ax.bar(range(len(rows)), [v.get("mean", 0.0) for v in values], yerr=[v.get("std", 0.0) for v in values],
               capsize=3, color=[f"C{i}" for i in range(len(rows))])
        users = "" if part == "overall" else f" ({rows[0]['slices'][part]['users']} users)"
        ax.set_title(part + users, fontsize=9)
        ax.set_xticks(range(len(rows)), [r["label"] for r in rows], rotation=25, ha="right", fontsize=7)
    axes[0].set_ylabel(f"test {metric_name(metric, table.get('hit_ratio', False))} ({table['protocol']})")
    figure.suptitle(table["title"])
    return _png(figure)


def groups_png(table: dict) -> bytes | None:
    """One panel per group kind: the first metric of each group (report protocol), one bar per model, ± std."""
    from matplotlib.figure import Figure

    kinds, rows = table.get("groups", []), table["rows"]
    if not kinds or not rows:
        return None
    metric, protocol = table["metrics"][0], table["protocol"]
    figure = Figure(figsize=(6.5 * len(kinds), 3.9), layout="constrained")
    axes = figure.subplots(1, len(kinds), squeeze=False).ravel()
    width = 0.8 / len(rows)
    for ax, kind in zip(axes, kinds):
        groups = list(rows[0]["groups"][kind])
        for i, row in enumerate(rows):
            values = [row["groups"][kind].get(g, {}).get(protocol, {}).get(metric) or {} for g in groups]
            xs = [g + (i - (len(rows) - 1) / 2) * width for g in range(len(groups))]
            ax.bar(xs, [v.get("mean", 0.0) for v in values], width, yerr=[v.get("std", 0.0) for v in values],
                   capsize=3, label=row["label"])
        users = [rows[0]["groups"][kind][g]["users"] for g in groups]
        ax.set_xticks(range(len(groups)), [f"{g}\n({u} users)" for g, u in zip(groups, users)], fontsize=7)
        ax.set_xlabel(GROUP_KINDS[kind])
        ax.set_ylabel(f"test {metric_name(metric, table.get('hit_ratio', False))} ({protocol})")
        ax.legend(fontsize=8)
    figure.suptitle(table["title"])
    return _png(figure)


def shuffle_png(table: dict) -> bytes | None:
    """Two panels, one bar per model: the original-vs-shuffled cosine of user
    vectors, and the relative change of the first metric on shuffled histories."""
    from matplotlib.figure import Figure

    rows = table["rows"]
    if not table.get("shuffle") or not rows:
        return None
    metric = table["metrics"][0]
    figure = Figure(figsize=(4 + 1.2 * len(rows), 3.9), layout="constrained")
    cosine_ax, drop_ax = figure.subplots(1, 2).ravel()
    labels = [r["label"] for r in rows]
    cosine = [r["shuffled"]["cosine"] for r in rows]
    cosine_ax.bar(range(len(rows)), [c["mean"] for c in cosine], yerr=[c["std"] for c in cosine], capsize=3,
                  color="tab:blue")
    cosine_ax.set_ylabel("cosine, original vs shuffled history")
    drops = [_drop(r["metrics"][metric], r["shuffled"]["metrics"][metric]) or 0.0 for r in rows]
    drop_ax.bar(range(len(rows)), drops, color="tab:red")
    drop_ax.axhline(0.0, color="black", lw=0.8)
    drop_ax.set_ylabel(f"{metric_name(metric, table.get('hit_ratio', False))} change on shuffled histories (%)")
    for ax in (cosine_ax, drop_ax):
        ax.set_xticks(range(len(rows)), labels, rotation=20, ha="right", fontsize=8)
    figure.suptitle(table["title"])
    return _png(figure)


def write_report(pipeline, record: list[dict], log=print) -> dict | None:
    """Write the report if every compared stage has finished; returns the results.
    ``record``: each stage's name, task, status this launch, seconds and run directory."""
    import jax

    spec = report_spec(pipeline)
    unfinished = [e.stage for e in spec.compare if runs.fingerprint(pipeline.stages[e.stage].run_dir) is None]
    if unfinished:
        log(f"report not written: {', '.join(unfinished)} not finished")
        return None
    table = results(pipeline, spec)
    text = markdown(table, record)
    log("\n" + text)
    if jax.process_index() == 0:
        out = pipeline.run_dir
        write_json_atomic(out / "results.json", {**table, "stages": record})
        write_bytes_atomic(out / "results.md", text.encode())
        curves = {s["name"]: runs.training_curves(s["run_dir"]) for s in record}
        figure = training_curves_png(curves)
        if figure is not None:
            write_bytes_atomic(out / "training_curves.png", figure)
        write_bytes_atomic(out / "metrics.png", metrics_png(table))
        written = ["results.json", "metrics.png"] + (["training_curves.png"] if figure else [])
        for name, png in (("slices.png", slices_png(table)), ("groups.png", groups_png(table)),
                          ("shuffle.png", shuffle_png(table))):
            if png is not None:
                write_bytes_atomic(out / name, png)
                written.append(name)
        log(f"report: {out / 'results.md'}, " + ", ".join(written))
    return table

