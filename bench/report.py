"""Ratios against the baselines, and the results as JSON and Markdown.

Every ratio is this system's figure divided by the baseline's, from the same run: above 1
means more texts per second, or more milliseconds, seconds, MiB or bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .workloads import BUCKETS, THRESHOLDS

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
BASES = ("torch", "fp32")


def _quotient(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or base == 0:
        return None
    return value / base


def ratios_against(results: dict[str, Any], system: str, baseline: str | None) -> dict[str, Any] | None:
    """``system``'s figures divided by ``baseline``'s: throughput, latency, cold start, RSS, size."""
    if baseline is None:
        return None
    throughput, latency = results["throughput"], results["latency"]
    cold, size = results["cold_start"], results["size"]
    ratios: dict[str, Any] = {"baseline": baseline, "throughput": {}, "tokens_per_s": {},
                              "latency_p50": {}, "latency_p99": {}}
    for bucket in BUCKETS:
        mine, base = throughput[system][bucket], throughput[baseline][bucket]
        ratios["throughput"][bucket] = {
            bs: _quotient(mine[bs]["texts_per_s"], base[bs]["texts_per_s"]) for bs in mine}
        ratios["tokens_per_s"][bucket] = {
            bs: _quotient(mine[bs]["tokens_per_s"], base[bs]["tokens_per_s"]) for bs in mine}
        for key in ("p50", "p99"):
            ratios[f"latency_{key}"][bucket] = _quotient(
                latency[system][bucket][f"{key}_ms"], latency[baseline][bucket][f"{key}_ms"])
    for key in ("seconds", "peak_rss_mib"):
        ratios[f"cold_start_{key}"] = _quotient(cold[system][key], cold[baseline][key])
    for key in ("model_file_bytes", "folder_bytes"):
        ratios[key] = _quotient(size[system][key], size[baseline][key])
    return ratios


def add_ratios(results: dict[str, Any]) -> dict[str, Any]:
    """Add ``results["ratios"][system]["vs_torch" | "vs_fp32"]`` for every measured system."""
    baselines = results["baselines"]
    results["ratios"] = {
        name: {f"vs_{key}": ratios_against(results, name, base) for key, base in baselines.items()}
        for name in results["throughput"]
    }
    return results


def write_json(results: dict[str, Any], out: Path) -> Path:
    """Write ``results.json`` (sorted keys, so runs diff cleanly)."""
    path = out / RESULTS_JSON
    path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def _fmt(value: float | None, spec: str = ".1f", suffix: str = "") -> str:
    return "–" if value is None else f"{value:{spec}}{suffix}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _ratio(results: dict[str, Any], name: str, base: str, *path: str) -> float | None:
    value: Any = results["ratios"][name][f"vs_{base}"]
    for key in path:
        if value is None:
            return None
        value = value.get(key)
    return value if isinstance(value, (int, float)) else None


def _context_lines(results: dict[str, Any]) -> list[str]:
    ctx = results["context"]
    flags = ", ".join(f for f, present in ctx["cpu"]["flags"].items() if present) or "none of interest"
    versions = ", ".join(f"{k} {v}" for k, v in ctx["versions"].items() if v)
    load = ctx.get("load_average_start", [None])[0]
    steal = ", ".join(
        f"{phase} {_fmt(value, '.1f', '%')}" for phase, value in ctx.get("cpu_steal_percent", {}).items()
    )
    return [
        "# embedrt benchmark", "",
        f"- command: `{ctx['command']}`",
        f"- date: {ctx['date']}; preset: {_preset(results['settings'])}",
        f"- CPU: {ctx['cpu']['model']} ({flags}); {ctx['usable_cpus']} usable CPUs; "
        f"threads per system: {ctx['threads']}; 1-min load average at start: {_fmt(load, '.2f')}",
        f"- CPU time stolen by other tenants of this virtual machine's host, per phase: {steal or 'n/a'} "
        "(high steal slows every system; compare ratios, not absolute figures)",
        f"- versions: {versions}",
        f"- baselines: torch = `{results['baselines']['torch']}`, fp32 = `{results['baselines']['fp32']}`; "
        "ratios are this system's figure ÷ the baseline's, from this run.", "",
    ]


def _systems_section(results: dict[str, Any]) -> list[str]:
    rows = []
    for s in results["systems"]:
        size = results["size"].get(s["name"], {}).get("model_file_bytes")
        note = s["reason"] or ", ".join(f"{k}={v}" for k, v in s["metadata"].items()
                                        if k in ("variant", "max_seq_length", "default_batch_size"))
        rows.append([s["name"], s["kind"], s["status"], _fmt(size and size / 1e6, ".1f", " MB"), note])
    return ["## Systems", ""] + _table(["system", "kind", "status", "model file", "notes"], rows) + [""]


def _workload_section(results: dict[str, Any]) -> list[str]:
    rows = [[b, str(w["count"]), f"{w['token_mean']:.1f} ± {w['token_std']:.1f}",
             f"{w['token_min']}–{w['token_max']}", str(w["over_128"]), str(w["over_256"])]
            for b, w in results["workloads"].items()]
    source = next(iter(results["workloads"].values()))["source"]
    note = f"Texts from: {source}. Tokens counted untruncated, special tokens included."
    return (["## Workloads", "", note, ""]
            + _table(["bucket", "texts", "tokens mean ± std", "range", "> 128", "> 256"], rows) + [""])


def _throughput_section(results: dict[str, Any]) -> list[str]:
    sizes = [str(b) for b in results["settings"]["batch_sizes"]]
    lines = ["## Throughput (texts/s) with fidelity to torch", "",
             "One call embeds the bucket's first n texts (n = max(64, 8 × batch), at most the bucket) "
             "with the given batch size; median of the repeats.", ""]
    for bucket in BUCKETS:
        header = ["system", *[f"b={b}" for b in sizes], f"tokens/s b={sizes[-1]}",
                  *[f"×torch b={b}" for b in sizes], f"×fp32 b={sizes[-1]}", "cos min / mean / p1"]
        rows = []
        for name, figures in results["throughput"].items():
            f = figures[bucket]
            q = results["quality"][name]["buckets"].get(bucket, {})
            rows.append([name, *[_fmt(f[b]["texts_per_s"]) for b in sizes],
                         _fmt(f[sizes[-1]]["tokens_per_s"], ".0f"),
                         *[_fmt(_ratio(results, name, "torch", "throughput", bucket, b), ".2f", "x")
                           for b in sizes],
                         _fmt(_ratio(results, name, "fp32", "throughput", bucket, sizes[-1]), ".2f", "x"),
                         _cos(q)])
        lines += [f"### {bucket}", ""] + _table(header, rows) + [""]
    return lines


def _cos(stats: dict[str, Any]) -> str:
    if not stats or stats.get("n", 0) == 0:
        return "–"
    return f"{stats['min']:.4f} / {stats['mean']:.4f} / {stats['p1']:.4f}"


def _latency_section(results: dict[str, Any]) -> list[str]:
    header = ["system", *[f"{b} p50 / p95 / p99 ms" for b in BUCKETS],
              *[f"{b} p50 ×torch / ×fp32" for b in BUCKETS]]
    rows = []
    for name, figures in results["latency"].items():
        rows.append([name, *[f"{figures[b]['p50_ms']:.2f} / {figures[b]['p95_ms']:.2f} / "
                             f"{figures[b]['p99_ms']:.2f}" for b in BUCKETS],
                     *[" / ".join(_fmt(_ratio(results, name, base, "latency_p50", b), ".2f", "x")
                                  for base in ("torch", "fp32")) for b in BUCKETS]])
    intro = ["## Batch-1 latency", "", "Each text embedded alone; below 1x is faster.", ""]
    return intro + _table(header, rows) + [""]


def _startup_section(results: dict[str, Any]) -> list[str]:
    header = ["system", "cold start s", "×torch", "×fp32", "peak RSS MiB", "×torch", "×fp32",
              "model file MB", "×torch", "×fp32"]
    rows = []
    for name, cold in results["cold_start"].items():
        size = results["size"][name]["model_file_bytes"]
        rows.append([name, _fmt(cold["seconds"], ".2f"),
                     *[_fmt(_ratio(results, name, b, "cold_start_seconds"), ".2f", "x") for b in BASES],
                     _fmt(cold["peak_rss_mib"], ".0f"),
                     *[_fmt(_ratio(results, name, b, "cold_start_peak_rss_mib"), ".2f", "x") for b in BASES],
                     _fmt(size / 1e6, ".1f"),
                     *[_fmt(_ratio(results, name, b, "model_file_bytes"), ".2f", "x") for b in BASES]])
    return (["## Cold start, memory, size", "",
             "New process to first embedding (median of runs); peak RSS of that process.", ""]
            + _table(header, rows) + [""])


def _quality_section(results: dict[str, Any]) -> list[str]:
    first: dict[str, Any] = next(iter(results["quality"].values()), {})
    sizes = list(first.get("batch_invariance", {}))
    header = ["system", *[f"cos {b} min / mean" for b in BUCKETS],
              *[f"cos > {t} tok min / mean (n)" for t in THRESHOLDS], "STS Spearman ×100",
              *[f"invariance b={b} min" for b in sizes]]
    rows = []
    for name, q in results["quality"].items():
        buckets = q["buckets"]
        rows.append([name, *[_cos_short(buckets.get(b)) for b in BUCKETS],
                     *[_cos_short(q.get(f"over_{t}"), with_n=True) for t in THRESHOLDS],
                     _fmt(q["sts_spearman_x100"], ".2f"),
                     *[_fmt(q["batch_invariance"][b]["min"], ".6f") for b in sizes]])
    return (["## Quality", "",
             "Cosine of each text's vector to the torch model's; invariance: a text alone vs inside "
             "shuffled mixed-length batches.", ""] + _table(header, rows) + [""])


def _cos_short(stats: dict[str, Any] | None, with_n: bool = False) -> str:
    if not stats or not stats.get("n"):
        return "–"
    text = f"{stats['min']:.4f} / {stats['mean']:.4f}"
    return f"{text} ({stats['n']})" if with_n else text


def render_markdown(results: dict[str, Any], chart: str | None) -> str:
    """The tables a person reads: context, systems, workloads, throughput, latency, start-up, quality."""
    lines = _context_lines(results) + _systems_section(results) + _workload_section(results)
    lines += _throughput_section(results) + _latency_section(results)
    lines += _startup_section(results) + _quality_section(results)
    if chart:
        lines += ["## Chart", "", f"![throughput vs fidelity]({chart})", ""]
    return "\n".join(lines)


def write_markdown(results: dict[str, Any], out: Path, chart: str | None) -> Path:
    """Write ``results.md``."""
    path = out / RESULTS_MD
    path.write_text(render_markdown(results, chart), encoding="utf-8")
    return path


def _preset(settings: dict[str, Any]) -> str:
    """The preset's name (results written before the lite preset record only ``quick``)."""
    return str(settings.get("preset", "quick" if settings["quick"] else "full"))
