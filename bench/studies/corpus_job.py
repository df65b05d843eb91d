"""The corpus job against offline ``Embedder.embed`` on the same texts (target: >= 90 %).

Builds two JSONL corpora from the shipped STS-B dev sentences (short: the sentences, cycled;
long: consecutive sentences joined to 160-340 tokens), then measures, each in a fresh process
so peak RSS is its own, with the same thread budget:

- ``offline``: ``Embedder.embed(texts, batch_size=32)`` on the texts held in memory (load not timed);
- ``job``: ``embed_corpus`` from the JSONL file to Parquet shards (reading, writing, the run
  record and the model load included);
- ``job, P processes``: the same job embedding in P worker processes (``--processes``);
- ``processes``: the alternative layout without the job, P processes with threads/P threads each, every one
  running ``Embedder.embed`` on its share at the same time (wall time from the first start to
  the last end).

Repeats run the systems in turn; the report gives medians and the job/offline ratio of each
repeat. Usage (the figures only mean something on a quiet machine)::

    python -m embedrt.bench.studies.corpus_job --out bench/results/corpus-job [--model DIR] [--rows 200000]
        [--long-rows 20000] [--threads 2] [--processes 2] [--repeats 3]

``--rows 2000 --long-rows 200 --repeats 1`` checks that it runs; ``--processes 1`` leaves the
several-processes layouts out (half the time).
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
from embedrt.bench.workloads import LONG_TOKENS, default_sts, join_to_targets, read_sts

BATCH_SIZE = 32


def build_corpora(model: Path, sts: Path, rows: int, long_rows: int, directory: Path) -> dict[str, Path]:
    """Write ``short.jsonl`` (``rows`` texts) and ``long.jsonl`` (``long_rows``) into ``directory``."""
    import numpy as np
    from tokenizers import Tokenizer

    pairs, _ = read_sts(sts)
    sentences = list(dict.fromkeys(s for pair in pairs for s in pair))
    tokenizer = Tokenizer.from_file(str(model / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    lengths = [len(e.ids) for e in tokenizer.encode_batch(sentences, add_special_tokens=False)]
    low, high = LONG_TOKENS
    targets = np.random.default_rng(1).integers(low, high, long_rows).tolist()
    corpora = {
        "short": [sentences[i % len(sentences)] for i in range(rows)],
        "long": join_to_targets(sentences, lengths, targets),
    }
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, texts in corpora.items():
        paths[name] = directory / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return paths


def child(system: str, corpus: Path, model: Path, threads: int, part: int, parts: int) -> dict[str, Any]:
    """Run one system in this process; the result as JSON-ready data.

    For ``job``, ``parts`` is the job's worker processes (1: embed in this process).
    """
    if system == "job":
        from embedrt.corpus import CorpusOptions, embed_corpus

        options = CorpusOptions(threads=threads, batch_size=BATCH_SIZE, processes=parts)
        with tempfile.TemporaryDirectory() as out:
            started = time.perf_counter()
            result = embed_corpus([corpus], out, model, options)
            seconds = time.perf_counter() - started
        return {"texts": result.embedded, "seconds": seconds, "peak_rss_mib": peak_rss_mib()}
    from embedrt.runtime import Embedder

    lines = corpus.read_text(encoding="utf-8").splitlines()
    texts = [json.loads(line)["text"] for line in lines[part::parts]]
    started = time.perf_counter()
    embedder = Embedder.load(model, threads, batch_size=BATCH_SIZE)
    load = time.perf_counter() - started
    embedder.embed(texts[:64])  # warm-up
    start_wall, started = time.time(), time.perf_counter()
    embedder.embed(texts, batch_size=BATCH_SIZE)
    seconds = time.perf_counter() - started
    return {"texts": len(texts), "seconds": seconds, "load_seconds": load, "start": start_wall,
            "end": start_wall + seconds, "peak_rss_mib": peak_rss_mib()}


def _spawn(system: str, corpus: Path, model: Path, threads: int, part: int = 0, parts: int = 1) -> Any:
    command = [sys.executable, "-m", "embedrt.bench.studies.corpus_job", "--child", system,
               "--corpus", str(corpus), "--model", str(model), "--threads", str(threads),
               "--part", f"{part}/{parts}"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)


def _collect(process: Any) -> dict[str, Any]:  # a subprocess.Popen[str]
    stdout, _ = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"benchmark child {process.args} failed with status {process.returncode}")
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return result


def measure(corpus: Path, model: Path, threads: int, processes: int) -> dict[str, Any]:
    """One repeat of the systems on ``corpus`` (with ``processes`` 1: offline and the job only)."""
    results: dict[str, Any] = {
        "offline": _collect(_spawn("offline", corpus, model, threads)),
        "job": _collect(_spawn("job", corpus, model, threads)),
    }
    if processes > 1:
        results[f"job, {processes} processes"] = _collect(_spawn("job", corpus, model, threads, 0, processes))
        children = [_spawn("offline", corpus, model, max(1, threads // processes), i, processes)
                    for i in range(processes)]
        parts = [_collect(c) for c in children]
        wall = max(p["end"] for p in parts) - min(p["start"] for p in parts)
        results["processes"] = {
            "texts": sum(p["texts"] for p in parts), "seconds": wall, "processes": processes,
            "threads_each": max(1, threads // processes),
            "peak_rss_mib": sum(p["peak_rss_mib"] or 0 for p in parts),
        }
    for result in results.values():
        result["texts_per_second"] = round(result["texts"] / result["seconds"], 1)
    return results


def summarise(repeats: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over repeats, and each repeat's ratio to offline (taken within the repeat)."""
    summary: dict[str, Any] = {}
    for system in repeats[0]:
        summary[system] = {
            "texts_per_second": statistics.median(r[system]["texts_per_second"] for r in repeats),
            "peak_rss_mib": max(r[system]["peak_rss_mib"] or 0 for r in repeats),
            "ratio_to_offline": [round(r[system]["texts_per_second"] / r["offline"]["texts_per_second"], 3)
                                 for r in repeats],
        }
        summary[system]["median_ratio"] = statistics.median(summary[system]["ratio_to_offline"])
    return summary


def render_markdown(results: dict[str, Any]) -> str:
    """The human table."""
    context = results["context"]
    lines = [
        "# Corpus job vs offline Embedder.embed", "",
        f"`{context['command']}`", "",
        f"{context['cpu']['model']}, {context['threads']} threads, batch {BATCH_SIZE}, "
        f"model {results['model']}, {results['repeats']} repeat(s), {context['date']}.", "",
    ]
    for corpus, summary in results["summary"].items():
        lines += [f"## {corpus} ({results['corpora'][corpus]['rows']:,} texts)", "",
                  "| system | texts/s (median) | vs offline (median; each repeat) | peak RSS MiB |",
                  "| --- | --- | --- | --- |"]
        for system, row in summary.items():
            each = ", ".join(f"{r:.3f}" for r in row["ratio_to_offline"])
            lines.append(f"| {system} | {row['texts_per_second']:,.1f} | {row['median_ratio']:.3f} ({each}) "
                         f"| {row['peak_rss_mib']:,.1f} |")
        lines.append("")
    lines += ["`job` includes reading the JSONL file, writing the shards and run.json, and loading the "
              "model; `offline` holds the texts in memory and excludes the load; `processes` is the "
              "several-processes layout with Embedder.embed alone (its RSS is the sum over its "
              "processes); the job's RSS with processes is its main process only.", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Parse arguments, build the corpora, measure, write ``results.json`` and ``results.md``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="Directory for the corpora, results.json and results.md.")
    parser.add_argument("--model", type=Path, default=None, help="Artefact (default: the default model).")
    parser.add_argument("--rows", type=int, default=200_000, help="Short texts (default 200000).")
    parser.add_argument("--long-rows", type=int, default=20_000, help="Long texts (default 20000).")
    parser.add_argument("--threads", type=int, default=None, help="Thread budget (default: usable CPUs).")
    parser.add_argument("--processes", type=int, default=2,
                        help="Processes of the alternative layout (1: measure offline and the job only).")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=["offline", "job"], help=argparse.SUPPRESS)
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--part", default="0/1", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from embedrt.runtime.cpus import usable_cpus
    from embedrt.runtime.home import default_model_dir

    model = (args.model or default_model_dir()).resolve()
    threads = args.threads or usable_cpus()
    if args.child:
        part, parts = (int(v) for v in args.part.split("/"))
        sys.stdout.write(json.dumps(child(args.child, args.corpus, model, threads, part, parts)) + "\n")
        return
    if args.out is None:
        parser.error("--out is required")
    sts = default_sts()
    if sts is None:
        parser.error("the STS-B dev data (bench/data/stsb-dev/dev.tsv) is missing from this install")
    corpora = build_corpora(model, sts, args.rows, args.long_rows, args.out / "corpora")
    context = run_context(threads, usable_cpus())
    repeats: dict[str, list[dict[str, Any]]] = {name: [] for name in corpora}
    for _ in range(args.repeats):
        for name, path in corpora.items():
            repeats[name].append(measure(path, model, threads, args.processes))
    results = {
        "context": context, "model": str(model), "repeats": args.repeats,
        "corpora": {name: {"path": str(path), "rows": args.rows if name == "short" else args.long_rows}
                    for name, path in corpora.items()},
        "runs": repeats, "summary": {name: summarise(runs) for name, runs in repeats.items()},
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "results.md").write_text(render_markdown(results))
    sys.stdout.write(render_markdown(results))


if __name__ == "__main__":
    main()
