"""The profile report as JSON and Markdown: peaks, roofline, and kernel time by op type."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PROFILE_JSON = "profile.json"
PROFILE_MD = "profile.md"
OPS_SHOWN = 10


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def _context(results: dict[str, Any]) -> list[str]:
    ctx = results["context"]
    flags = ", ".join(f for f, present in ctx["cpu"]["flags"].items() if present) or "none of interest"
    versions = ", ".join(f"{k} {v}" for k, v in ctx["versions"].items() if v)
    settings = results["settings"]
    return [
        "# Where the time goes: onnxruntime profile and roofline", "",
        f"- command: `{ctx['command']}`",
        f"- date: {ctx['date']}; CPU: {ctx['cpu']['model']} ({flags}); threads: {ctx['threads']}; "
        f"1-min load average at start: {ctx['load_average_start'][0]:.2f}",
        f"- versions: {versions}",
        f"- texts: {settings['texts_source']}; batch 32 = one call of 32 texts; batch 1 = "
        f"{settings['batch1_texts']} texts one by one; {settings['repeats']} passes after one warm-up, "
        "median (timing from a session without the profiler; shares from a profiled twin).", "",
    ]


def _peaks(results: dict[str, Any]) -> list[str]:
    rows = [[p["kernel"], "×".join(str(d) for d in p["shape"]), f"{p['gflops']:.0f}",
             f"{1e3 * p['best_seconds']:.3f}", f"{1e3 * p['median_seconds']:.3f}"] for p in results["peaks"]]
    limits = ", ".join(f"{k}: {v['gflops']:.0f} GFLOP/s ({v['kernel']}, "
                       f"{'×'.join(str(d) for d in v['shape'])})" for k, v in results["limits"].items())
    return (["## GEMM peaks measured with onnxruntime", "",
             "One-node graphs, best of the timed calls; one multiply-add = 2 operations.", ""]
            + _table(["kernel", "M×K×N", "GFLOP/s (best)", "best ms", "median ms"], rows)
            + ["", f"Limits used below: {limits}.", ""])


def _roofline(results: dict[str, Any]) -> list[str]:
    rows = []
    for name, variant in results["variants"].items():
        for case_name, case in variant["cases"].items():
            limit = case.get("limit", {})
            rows.append([name, case_name, f"{case['tokens_mean']:.0f}", f"{case['texts_per_s']:.1f}",
                         f"{case['useful_gflops']:.1f}", f"{case['executed_gflops']:.1f}",
                         f"{limit.get('peak_gflops', 0):.0f} ({limit.get('precision', '–')})",
                         _pct(limit.get("fraction_useful")), _pct(limit.get("fraction_executed")),
                         f"{limit.get('texts_per_s_at_limit', 0):.0f}"])
    arith = [f"- `{name}`: {v['arithmetic']['weight_flops_per_token'] / 1e6:.2f} MFLOP per token in "
             f"{v['arithmetic']['weight_products']} weight products + "
             f"{v['arithmetic']['attention_flops_per_token_sq']} × n² per text in "
             f"{v['arithmetic']['attention_products']} attention products "
             f"({v['arithmetic']['precision']} weight GEMMs)" for name, v in results["variants"].items()]
    header = ["artefact", "case", "tokens/text", "texts/s", "useful GFLOP/s", "executed GFLOP/s",
              "limit GFLOP/s", "of limit (useful)", "of limit (executed)", "texts/s at limit"]
    return (["## Roofline", "", "Model arithmetic, counted from each graph:", "", *arith, "",
             "Useful = each text at its own length; executed = padded to the batch's width. The limit is "
             "the measured GEMM peak of the variant's weight-product precision (attention's activation "
             "products run in fp32 in every variant).", ""]
            + _table(header, rows) + [""])


def _ops(results: dict[str, Any]) -> list[str]:
    lines = ["## Share of kernel time by op type", ""]
    for name, variant in results["variants"].items():
        cases = variant["cases"]
        shares = {c: {o["op"]: o["share"] for o in case["ops"]} for c, case in cases.items()}
        totals: dict[str, float] = {}
        for case_shares in shares.values():
            for op, share in case_shares.items():
                totals[op] = totals.get(op, 0.0) + share
        ranked = sorted(totals, key=lambda op: -totals[op])
        shown, rest = ranked[:OPS_SHOWN], ranked[OPS_SHOWN:]
        rows = [[op, *[_pct(shares[c].get(op, 0.0)) for c in cases]] for op in shown]
        if rest:
            rows.append(["other", *[_pct(sum(shares[c].get(op, 0.0) for op in rest)) for c in cases]])
        rows.append(["kernels / run wall time",
                     *[_pct(case["kernel_share_of_run"]) for case in cases.values()]])
        lines += [f"### {name}", ""] + _table(["op", *cases], rows) + [""]
        for case_name, case in cases.items():
            top = ", ".join(f"`{n['node']}` ({n['op']}) {_pct(n['share'])}" for n in case["top_nodes"][:5])
            lines.append(f"- heaviest nodes, {case_name}: {top}")
        lines.append("")
    return lines


def render_markdown(results: dict[str, Any]) -> str:
    """The report a person reads."""
    return "\n".join(_context(results) + _peaks(results) + _roofline(results) + _ops(results))


def write_reports(results: dict[str, Any], out: Path) -> list[Path]:
    """Write profile.json and profile.md into ``out`` (created if needed); returns their paths.

    Raises:
        OSError: ``out`` cannot be created or written.
    """
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / PROFILE_JSON, out / PROFILE_MD
    json_path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    md_path.write_text(render_markdown(results), encoding="utf-8")
    return [json_path, md_path]
