"""results.json, report.md and the plots of a benchmark run."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.accuracy import figures, tables
from benchmarks.accuracy.aggregate import aggregate
from benchmarks.accuracy.runner import load_errors, load_results
from benchmarks.accuracy.settings import BenchConfig

HEADLINE_ROWS = (
    ("probe_logreg", "max_softmax"),
    ("probe_logreg", "reachability"),
    ("probe_ncm", "reachability"),
    ("probe_knn10", "reachability"),
    ("plain", "max_softmax"),
    ("balanced_softmax", "max_softmax"),
    ("balanced_softmax_scratch", "max_softmax"),
    ("oltr", "max_softmax"),
    ("oltr", "reachability"),
    ("oltr", "combined"),
    ("oltr", "energy"),
    ("oltr_photos", "reachability"),
    ("oltr_photos", "max_softmax"),
    ("oltr_photos", "combined"),
)


def collect(bench: BenchConfig, work: Path, protocols: Sequence[str]) -> dict[str, Any]:
    """Aggregated results of every protocol that has finished runs."""
    out: dict[str, Any] = {}
    for name in protocols:
        runs = load_results(work, name)
        if not runs:
            continue
        spec = bench.protocols[name]
        methods = aggregate(runs)
        order = [m for m in spec.methods if m in methods]
        first = runs[0]
        out[name] = {
            "title": spec.title,
            "dataset": spec.dataset,
            "class_names": first["class_names"],
            "train_counts": first["train_counts"],
            "shot_groups": first["report"]["shot_groups"],
            "methods": {m: methods[m] for m in order},
            "failed": load_errors(work, name),
        }
    return out


def write(
    bench: BenchConfig, work: Path, out: Path, protocols: Sequence[str], meta: Mapping[str, Any]
) -> Path:
    """Write results.json, report.md and plots/ into ``out``; return report.md's path."""
    out.mkdir(parents=True, exist_ok=True)
    results = collect(bench, work, protocols)
    payload = {"config": bench.model_dump(mode="json"), "meta": dict(meta), "protocols": results}
    (out / "results.json").write_text(json.dumps(payload, indent=1))
    parts = [f"# Accuracy benchmark `{bench.name}`\n", _meta_lines(meta)]
    for name, proto in results.items():
        parts.append(_protocol_section(bench, work, out, name, proto))
    path = out / "report.md"
    path.write_text("\n".join(parts))
    return path


def _meta_lines(meta: Mapping[str, Any]) -> str:
    return "".join(f"- {key}: {value}\n" for key, value in meta.items())


def _protocol_section(
    bench: BenchConfig, work: Path, out: Path, name: str, proto: Mapping[str, Any]
) -> str:
    methods = proto["methods"]
    counts = dict(zip(proto["class_names"], proto["train_counts"], strict=True))
    groups = proto["shot_groups"]
    lines = [
        f"## {proto['title']}\n",
        f"Training images per class: {counts}; shot groups: {groups['rule']}.\n",
        "### Headline\n",
        tables.headline_table(methods, HEADLINE_ROWS),
        "### Closed-set top-1 (%) by shot group\n",
        tables.closed_set_table(methods),
    ]
    open_tables = tables.open_set_tables(methods)
    if open_tables:
        lines += [
            "### Open set (known = positive)\n",
            open_tables,
            "### Feature diagnostics (first explanation of the reachability score)\n",
            tables.diagnostics_table(methods),
        ]
    for failure in proto["failed"]:
        lines.append(f"- FAILED: {failure['method']} seed {failure['seed']}: {failure['error']}\n")
    lines.append(_plots(bench, work, out, name, proto))
    return "\n".join(lines)


def _plots(bench: BenchConfig, work: Path, out: Path, name: str, proto: Mapping[str, Any]) -> str:
    plot_dir = out / "plots"
    methods = proto["methods"]
    groups = proto["shot_groups"]
    links = []
    path = figures.per_class_accuracy(
        methods,
        bench.accuracy_plot_methods,
        proto["train_counts"],
        plot_dir / f"{name}_per_class_accuracy.png",
        many=groups["many_shot"],
        few=groups["few_shot"],
    )
    if path is not None:
        links.append(path)
    for method in bench.histogram_methods:
        if method not in methods:
            continue
        seed = methods[method]["seeds"][0]
        run = json.loads((work / name / f"seed{seed}" / method / "result.json").read_text())
        links += figures.score_histograms(work, name, seed, method, run, plot_dir)
    body = "".join(f"![{p.stem}](plots/{p.name})\n" for p in links)
    return f"### Plots\n\n{body}" if body else ""
