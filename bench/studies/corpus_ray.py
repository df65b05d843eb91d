"""The corpus job on a local Ray (``--engine ray``) against the local engine, same corpus and CPUs.

Builds the short and long JSONL corpora of :mod:`embedrt.bench.studies.corpus_job` (STS-B dev
sentences), then runs, each in a fresh process and with the same CPU budget:

- ``local``: ``embed_corpus`` in this process (the local engine, ``threads`` threads);
- ``ray AxC``: ``embed_corpus(engine="ray")`` on a private local Ray instance started by the
  job with the same CPUs, ``A`` actors of ``C`` CPUs (threads) each, ``A x C = threads``.

Each run reports its wall time from the call to its return (Ray's start-up, the actors' model
loads and Ray's shutdown included), the time to its first finished rows (start-up), the
steady rate after that (rows after the first result / time from the first result to the
last), and the driver's peak RSS (Ray's actors are other processes: not counted). The
overhead of Ray is the difference in wall time, and the steady-rate ratio says what is left
of it on a corpus long enough to hide the start-up. Repeats run the systems in turn; ratios
are taken within a repeat. Usage (the figures only mean something on a quiet machine)::

    python -m embedrt.bench.studies.corpus_ray --out bench/results/corpus-ray [--model DIR]
        [--rows 200000] [--long-rows 20000] [--threads 2] [--layouts 2x1,1x2] [--repeats 3]

``--rows 2000 --long-rows 200 --rows-per-shard 500 --repeats 1`` checks that it runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from embedrt.bench.context import run_context
from embedrt.bench.machine import peak_rss_mib
from embedrt.bench.studies.corpus_job import BATCH_SIZE, build_corpora
from embedrt.bench.workloads import default_sts

DEFAULT_ROWS_PER_SHARD = 10_000


def child(system: str, corpus: Path, model: Path, threads: int, rows_per_shard: int) -> dict[str, Any]:
    """Run one system (``local`` or ``ray AxC``) in this process; the result as JSON-ready data."""
    from embedrt.corpus import CorpusOptions, Progress, embed_corpus

    if system == "local":
        options = CorpusOptions(threads=threads, batch_size=BATCH_SIZE, rows_per_shard=rows_per_shard)
    else:
        actors, cpus = (int(v) for v in system.removeprefix("ray ").split("x"))
        options = CorpusOptions(batch_size=BATCH_SIZE, rows_per_shard=rows_per_shard, engine="ray",
                                engine_options={"actors": actors, "cpus_per_actor": cpus})
    marks: list[tuple[float, int]] = []

    def note(progress: Progress) -> None:
        marks.append((time.perf_counter(), progress.rows))

    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        result = embed_corpus([corpus], out, model, options, progress=note)
        seconds = time.perf_counter() - started
    first_time, first_rows = marks[0]
    last_time, last_rows = marks[-1]
    steady = (last_rows - first_rows) / (last_time - first_time) if last_time > first_time else None
    return {
        "texts": result.embedded, "seconds": round(seconds, 3),
        "texts_per_second": round(result.embedded / seconds, 1),
        "first_result_seconds": round(first_time - started, 3),
        "steady_texts_per_second": round(steady, 1) if steady else None,
        "shards": result.shards, "peak_rss_mib": peak_rss_mib(),
    }


def _run(system: str, corpus: Path, model: Path, threads: int, rows_per_shard: int) -> dict[str, Any]:
    command = [sys.executable, "-m", "embedrt.bench.studies.corpus_ray", "--child", system,
               "--corpus", str(corpus), "--model", str(model), "--threads", str(threads),
               "--rows-per-shard", str(rows_per_shard)]
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark child {command} failed with status {done.returncode}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def summarise(repeats: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over repeats, and each repeat's ratios to ``local`` (taken within the repeat)."""
    summary: dict[str, Any] = {}
    for system in repeats[0]:
        rows = [r[system] for r in repeats]
        ratios = [round(r[system]["texts_per_second"] / r["local"]["texts_per_second"], 3) for r in repeats]
        steady = [round(r[system]["steady_texts_per_second"] / r["local"]["steady_texts_per_second"], 3)
                  for r in repeats
                  if r[system]["steady_texts_per_second"] and r["local"]["steady_texts_per_second"]]
        summary[system] = {
            "texts_per_second": statistics.median(x["texts_per_second"] for x in rows),
            "seconds": statistics.median(x["seconds"] for x in rows),
            "overhead_seconds": statistics.median(
                r[system]["seconds"] - r["local"]["seconds"] for r in repeats),
            "first_result_seconds": statistics.median(x["first_result_seconds"] for x in rows),
            "ratio_to_local": ratios, "median_ratio": statistics.median(ratios),
            "steady_ratio_to_local": steady,
            "median_steady_ratio": statistics.median(steady) if steady else None,
            "peak_rss_mib": max(x["peak_rss_mib"] or 0 for x in rows),
        }
    return summary


def render_markdown(results: dict[str, Any]) -> str:
    """The human table."""
    context = results["context"]
    lines = [
        "# Corpus job: Ray Data on one machine vs the local engine", "",
        f"`{context['command']}`", "",
        f"{context['cpu']['model']}, {context['threads']} CPUs for every system, batch {BATCH_SIZE}, "
        f"{results['rows_per_shard']:,} rows per shard, model {results['model']}, Ray "
        f"{results['ray_version']}, {results['repeats']} repeat(s), {context['date']}.", "",
    ]
    for corpus, summary in results["summary"].items():
        lines += [f"## {corpus} ({results['corpora'][corpus]['rows']:,} texts)", "",
                  "| system | texts/s, whole run | vs local (each repeat) | wall s | overhead s | "
                  "first result s | steady vs local | driver peak RSS MiB |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for system, row in summary.items():
            each = ", ".join(f"{r:.3f}" for r in row["ratio_to_local"])
            steady = "-" if row["median_steady_ratio"] is None else f"{row['median_steady_ratio']:.3f}"
            lines.append(
                f"| {system} | {row['texts_per_second']:,.1f} | {row['median_ratio']:.3f} ({each}) | "
                f"{row['seconds']:.1f} | {row['overhead_seconds']:+.1f} | "
                f"{row['first_result_seconds']:.1f} | "
                f"{steady} | {row['peak_rss_mib']:,.1f} |"
            )
        lines.append("")
    lines += [
        "Whole run: from the call to its return (reading, writing, run.json, model loads; for Ray also "
        "starting and stopping a private local Ray and its actors). Overhead: the median of each "
        "repeat's wall-time difference to `local`. First result: seconds to the first finished rows "
        "(a chunk for local, a shard for Ray). Steady: rows after the first result per second, as a "
        "ratio to local's. RSS: the driver process only (Ray's actors are separate processes).", "",
    ]
    return "\n".join(lines)


def _layouts(text: str | None, threads: int) -> list[str]:
    if text is None:
        layouts = {f"{threads}x1", f"1x{threads}"}
        return sorted(layouts, reverse=True)
    found = []
    for part in text.split(","):
        actors, _, cpus = part.partition("x")
        if not (actors.isdigit() and cpus.isdigit()) or int(actors) * int(cpus) != threads:
            raise SystemExit(f"--layouts: {part!r} is not AxC with A x C = {threads} (the thread budget)")
        found.append(part)
    return found


def main(argv: Sequence[str] | None = None) -> None:
    """Parse arguments, build the corpora, measure, write ``results.json`` and ``results.md``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="Directory for the corpora, results.json and results.md.")
    parser.add_argument("--model", type=Path, default=None, help="Artefact (default: the default model).")
    parser.add_argument("--rows", type=int, default=200_000, help="Short texts (default 200000).")
    parser.add_argument("--long-rows", type=int, default=20_000, help="Long texts (default 20000).")
    parser.add_argument("--threads", type=int, default=None, help="CPU budget (default: usable CPUs).")
    parser.add_argument("--layouts", default=None,
                        help="Ray layouts as AxC (actors x CPUs each), comma-separated; A x C = threads. "
                        "Default: Tx1 and 1xT.")
    parser.add_argument("--rows-per-shard", type=int, default=DEFAULT_ROWS_PER_SHARD)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from embedrt.runtime.cpus import usable_cpus
    from embedrt.runtime.home import default_model_dir

    model = (args.model or default_model_dir()).resolve()
    threads = args.threads or usable_cpus()
    if args.child:
        result = child(args.child, args.corpus, model, threads, args.rows_per_shard)
        sys.stdout.write(json.dumps(result) + "\n")
        return
    if args.out is None:
        parser.error("--out is required")
    try:
        import ray
    except ImportError:
        parser.error("Ray is not installed: pip install -e '.[ray]' in an embedrt checkout")
    sts = default_sts()
    if sts is None:
        parser.error("the STS-B dev data (bench/data/stsb-dev/dev.tsv) is missing from this install")
    systems = ["local"] + [f"ray {layout}" for layout in _layouts(args.layouts, threads)]
    corpora = build_corpora(model, sts, args.rows, args.long_rows, args.out / "corpora")
    context = run_context(threads, usable_cpus())
    repeats: dict[str, list[dict[str, Any]]] = {name: [] for name in corpora}
    for _ in range(args.repeats):
        for name, path in corpora.items():
            repeats[name].append({s: _run(s, path, model, threads, args.rows_per_shard) for s in systems})
    results = {
        "context": context, "model": str(model), "repeats": args.repeats, "ray_version": ray.__version__,
        "rows_per_shard": args.rows_per_shard,
        "corpora": {name: {"path": str(path), "rows": args.rows if name == "short" else args.long_rows}
                    for name, path in corpora.items()},
        "runs": repeats, "summary": {name: summarise(runs) for name, runs in repeats.items()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "results.md").write_text(render_markdown(results))
    sys.stdout.write(render_markdown(results))


if __name__ == "__main__":
    main()
