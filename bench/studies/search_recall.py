"""Recall@10 of int8 and ubinary corpus search against float32 exact search; exact-search time.

    python -m embedrt.bench.studies.search_recall --out DIR [--model ARTEFACT] [--corpus-size N]
        [--queries 200] [--multipliers 2,4,10] [--timing-rows 1000000] [--repeats 5] [--threads N]

The corpus is public text available offline, in a fixed order: the STS-B dev sentences shipped
in ``bench/data/stsb-dev/dev.tsv`` (CC-BY-SA 4.0) and sentences split from the docstrings of this
Python's standard library (read with ``ast``; nothing is imported). The texts are deduplicated
and shuffled with a fixed seed; the first ``--queries`` are held out as queries, the next
``--corpus-size`` are the corpus (default: all the rest).

The corpus is embedded by the real job (``embed_corpus``) once per precision: float32, int8
(ranges calibrated by the job on the corpus's first rows) and ubinary. Each query's top 10 from
float32 exact search is the truth; for int8 and ubinary the report gives recall@10 without
rescoring and with rescoring at each ``--multipliers`` value (sentence-transformers' default is
2), and the search time per query at that size.

Exact search at ``--timing-rows`` vectors (default a million) is timed on synthetic random unit
vectors of the model's dimension, written as shards like the job's, per precision, to decide
whether exact search is fast enough or an approximate index (usearch, faiss) is needed: without
the search cache (every query decodes the Parquet shards), the first search (which writes the
cache), and later searches (which read it), one query at a time and in a batch of 32. Timings
are only meaningful on a quiet machine; recall does not depend on load.

Writes ``search_recall.json`` and ``search_recall.md`` to ``--out`` (work files in
``--out/work``; the synthetic shards are deleted at the end unless ``--keep-synthetic``).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import logging
import re
import shutil
import statistics
import sys
import sysconfig
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from embedrt.bench.context import run_context
from embedrt.bench.workloads import SHIPPED_STS, read_sts
from embedrt.corpus.errors import RunMismatchError
from embedrt.corpus.job import CorpusOptions, embed_corpus
from embedrt.corpus.search import DEFAULT_RESCORE_MULTIPLIER, SearchHit, search_vectors
from embedrt.corpus.writer import COMPRESSION, SEARCH_CACHE_DIR, FinishedUnit, shard_schema
from embedrt.runtime.cpus import usable_cpus
from embedrt.runtime.embedder import Embedder
from embedrt.runtime.home import default_model_dir
from embedrt.runtime.manifest import MANIFEST_FILE, sha256_file
from embedrt.runtime.precision import Int8Calibration, calibrate_int8, code_width, quantize_embeddings

logger = logging.getLogger(__name__)

K = 10
SEED = 0
PRECISIONS = ("float32", "int8", "ubinary")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
# Parts of the standard library that are test suites or vendored tools, not documentation.
_SKIPPED_DIRS = {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__"}
_TIMING_SHARD_ROWS = 10_000  # the job's default rows per shard


def stsb_sentences(path: Path = SHIPPED_STS) -> list[str]:
    """Both sentences of every STS-B dev pair, in file order."""
    pairs, _ = read_sts(path)
    return [sentence for pair in pairs for sentence in pair]


def docstring_sentences(root: Path | None = None) -> list[str]:
    """Prose sentences (6-60 words) from the docstrings of the standard library's modules.

    Files are read in sorted order and parsed with :mod:`ast` (no module is imported); a
    sentence must start upper-case, end with ``.``, ``!`` or ``?``, and be mostly letters.
    """
    root = root or Path(sysconfig.get_paths()["stdlib"])
    files = sorted(
        path for path in root.rglob("*.py") if not _SKIPPED_DIRS & set(path.relative_to(root).parts)
    )
    sentences: list[str] = []
    for path in files:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue  # a few stdlib files are templates or in other encodings
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                sentences.extend(_prose(ast.get_docstring(node) or ""))
    return sentences


def _prose(docstring: str) -> Iterator[str]:
    for paragraph in re.split(r"\n\s*\n", docstring):
        for sentence in _SENTENCE_END.split(" ".join(paragraph.split())):
            letters = sum(c.isalpha() for c in sentence)
            if (6 <= len(sentence.split()) <= 60 and sentence[0].isupper() and sentence[-1] in ".!?"
                    and ">>>" not in sentence and letters > 0.7 * len(sentence.replace(" ", ""))):
                yield sentence


def corpus_and_queries(size: int | None, queries: int) -> tuple[list[str], list[str], dict[str, int]]:
    """Deduplicated, shuffled texts split into ``(corpus, queries, source counts)``.

    Raises:
        ValueError: fewer texts than ``queries`` + 1 (or + ``size``).
    """
    sources = {"stsb_dev": stsb_sentences(), "stdlib_docstrings": docstring_sentences()}
    texts = list(dict.fromkeys(text for group in sources.values() for text in group))
    order = np.random.default_rng(SEED).permutation(len(texts))
    shuffled = [texts[i] for i in order]
    wanted = queries + (size or 1)
    if len(shuffled) < wanted:
        raise ValueError(f"only {len(shuffled)} distinct texts; --queries + --corpus-size needs {wanted}")
    corpus = shuffled[queries : queries + size] if size else shuffled[queries:]
    counts = {name: len(group) for name, group in sources.items()} | {"distinct": len(texts)}
    return corpus, shuffled[:queries], counts


def embed_runs(corpus: Sequence[str], work: Path, model: Path, threads: int | None) -> dict[str, Path]:
    """The corpus embedded by the real job once per precision (a finished run is reused)."""
    source = work / "corpus.jsonl"
    lines = "".join(
        json.dumps({"id": f"t{i}", "text": text}, ensure_ascii=False) + "\n" for i, text in enumerate(corpus)
    )
    if not source.is_file() or source.read_text(encoding="utf-8") != lines:
        source.write_text(lines, encoding="utf-8")
    runs = {}
    for precision in PRECISIONS:
        out = work / f"run-{precision}"
        options = CorpusOptions(precision=precision, id_column="id", threads=threads)
        try:  # the same corpus and model: the finished run is reused
            result = embed_corpus([source], out, model, options)
        except RunMismatchError:
            result = embed_corpus([source], out, model, dataclasses.replace(options, overwrite=True))
        logger.info("%s: %s in %.1f s", precision, result.status, result.seconds)
        runs[precision] = out
    return runs


def recall_at_k(results: Sequence[Sequence[SearchHit]], truth: Sequence[Sequence[SearchHit]]) -> float:
    """Mean share of each query's true top-k ids found in its results."""
    shares = [len({h.id for h in got} & {h.id for h in want}) / len(want)
              for got, want in zip(results, truth, strict=True)]
    return round(float(np.mean(shares)), 4)


def _timed(
    run: Path, queries: npt.NDArray[np.float32], **options: Any  # search_vectors' keywords
) -> tuple[list[list[SearchHit]], float]:
    started = time.perf_counter()
    hits = search_vectors(run, queries, k=K, **options)
    return hits, time.perf_counter() - started


def _per_query_seconds(run: Path, queries: npt.NDArray[np.float32], repeats: int, **options: Any) -> float:
    """Median time of searching one query (after a warm-up), over ``repeats`` queries."""
    _timed(run, queries[:1], **options)
    times = [_timed(run, queries[i % len(queries)][None], **options)[1] for i in range(repeats)]
    return statistics.median(times)


def measure_recall(runs: dict[str, Path], queries: npt.NDArray[np.float32], multipliers: Sequence[int],
                   repeats: int) -> dict[str, Any]:
    """Recall@10 per precision and rescoring setting, and the search time per query."""
    truth, _ = _timed(runs["float32"], queries)
    table: dict[str, Any] = {"float32": {"exact": 1.0, "seconds_per_query": _per_query_seconds(
        runs["float32"], queries, repeats)}}
    for precision in ("int8", "ubinary"):
        plain, _ = _timed(runs[precision], queries, rescore=False)
        row: dict[str, Any] = {"no_rescore": recall_at_k(plain, truth)}
        for multiplier in multipliers:
            rescored, _ = _timed(runs[precision], queries, rescore_multiplier=multiplier)
            row[f"rescore_x{multiplier}"] = recall_at_k(rescored, truth)
        row["seconds_per_query"] = _per_query_seconds(runs[precision], queries, repeats)
        table[precision] = row
    return table


def write_vector_run(directory: Path, chunks: Iterator[npt.NDArray[np.float32]], precision: str, dim: int,
                     calibration: Int8Calibration | None, model: Path) -> Path:
    """A run directory holding given vectors, laid out as the job's (for timing only)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    shutil.rmtree(directory, ignore_errors=True)
    (directory / "shards").mkdir(parents=True)
    width = code_width(precision, dim)
    schema = shard_schema(precision, width)
    entries, start = [], 0
    for index, vectors in enumerate(chunks):
        codes = quantize_embeddings(vectors, precision, calibration)
        name = f"part-{index:06d}"
        table = pa.Table.from_arrays([
            pa.array([f"s{row}" for row in range(start, start + len(codes))], pa.string()),
            pa.FixedSizeListArray.from_arrays(pa.array(codes.reshape(-1)), width),
            pa.array(np.zeros(len(codes), np.int32)), pa.array(np.zeros(len(codes), np.bool_)),
        ], schema=schema)
        shard = directory / "shards" / f"{name}.parquet"
        pq.write_table(table, shard, row_group_size=len(codes), compression=COMPRESSION,
                       use_dictionary=False, write_statistics=False)
        entries.append(FinishedUnit(
            name=name, input=0, index=index, first_row=start + 1, rows_read=len(codes), embedded=len(codes),
            skipped=0, truncated=0, shard=f"shards/{name}.parquet", bytes=shard.stat().st_size,
            sha256=sha256_file(shard),
        ).to_dict())
        start += len(codes)
    record = {
        "format": "embedrt-corpus-run", "version": 1, "status": "complete", "synthetic": True,
        "model": {"name": "synthetic", "variant": "random unit vectors", "path": str(model), "dim": dim,
                  "manifest_sha256": sha256_file(model / MANIFEST_FILE)},
        "precision": {"name": precision, "width": width,
                      "calibration": calibration.to_dict() if calibration else None},
        "shards": entries,
    }
    (directory / "run.json").write_text(json.dumps(record), encoding="utf-8")
    return directory


def _unit_chunks(rows: int, dim: int, seed: int) -> Iterator[npt.NDArray[np.float32]]:
    rng = np.random.default_rng(seed)
    for start in range(0, rows, _TIMING_SHARD_ROWS):
        chunk = rng.standard_normal((min(_TIMING_SHARD_ROWS, rows - start), dim), dtype=np.float32)
        yield chunk / np.linalg.norm(chunk, axis=1, keepdims=True)


def measure_scale(work: Path, rows: int, dim: int, model: Path, repeats: int, keep: bool) -> dict[str, Any]:
    """Exact search time at ``rows`` synthetic unit vectors, per precision."""
    results: dict[str, Any] = {"rows": rows, "dim": dim}
    calibration = calibrate_int8(next(_unit_chunks(min(rows, _TIMING_SHARD_ROWS), dim, SEED)))
    queries = next(_unit_chunks(max(repeats, 32), dim, SEED + 1))
    for precision in PRECISIONS:
        directory = work / f"synthetic-{precision}"
        started = time.perf_counter()
        write_vector_run(directory, _unit_chunks(rows, dim, SEED), precision, dim,
                         calibration if precision == "int8" else None, model)
        written = time.perf_counter() - started
        size = sum(p.stat().st_size for p in (directory / "shards").iterdir())
        uncached = _per_query_seconds(directory, queries, repeats, cache=False)
        first = _timed(directory, queries[:1])[1]  # decodes every shard and writes the cache
        cache_bytes = sum(p.stat().st_size for p in (directory / SEARCH_CACHE_DIR).iterdir())
        batch = _timed(directory, queries[:32])[1] / 32
        results[precision] = {
            "shard_bytes": size, "write_seconds": round(written, 2), "cache_bytes": cache_bytes,
            "seconds_per_query_uncached": round(uncached, 4),
            "seconds_first_search_writing_the_cache": round(first, 3),
            "seconds_per_query": round(_per_query_seconds(directory, queries, repeats), 4),
            "seconds_per_query_in_batch_of_32": round(batch, 4),
        }
        if not keep:
            shutil.rmtree(directory)
    return results


def render_markdown(results: dict[str, Any]) -> str:
    """The report as markdown: sources, the recall table, the timings, the context."""
    recall, scale, corpus = results["recall"], results.get("scale"), results["corpus"]
    multipliers = results["settings"]["multipliers"]
    lines = [
        "# Search recall@10 against float32 exact search", "",
        f"Corpus: {corpus['size']} texts, {corpus['queries']} held-out queries, model "
        f"{results['model']['name']} {results['model']['variant']} (dim {results['model']['dim']}); "
        f"sources: STS-B dev sentences ({corpus['sources']['stsb_dev']}), Python {results['python']} "
        f"standard-library docstring sentences ({corpus['sources']['stdlib_docstrings']}), "
        f"{corpus['sources']['distinct']} distinct.", "",
        "| precision | no rescoring | " + " | ".join(
            f"rescore x{m}{' (default)' if m == DEFAULT_RESCORE_MULTIPLIER else ''}" for m in multipliers)
        + " | search ms/query |",
        "| --- | --- | " + " | ".join("---" for _ in multipliers) + " | --- |",
        f"| float32 (exact) | 1.0000 | {' | '.join('1.0000' for _ in multipliers)} | "
        f"{1000 * recall['float32']['seconds_per_query']:.1f} |",
    ]
    for precision in ("int8", "ubinary"):
        row = recall[precision]
        lines.append(f"| {precision} | {row['no_rescore']:.4f} | " + " | ".join(
            f"{row[f'rescore_x{m}']:.4f}" for m in multipliers
        ) + f" | {1000 * row['seconds_per_query']:.1f} |")
    if scale:
        lines += ["", f"## Exact search at {scale['rows']:,} synthetic unit vectors (dim {scale['dim']})", "",
                  "| precision | shard MB | cache MB | s/query, no cache | first search (writes the cache) s "
                  "| s/query, cached | s/query in a batch of 32, cached |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for precision in PRECISIONS:
            row = scale[precision]
            lines.append(f"| {precision} | {row['shard_bytes'] / 1e6:.0f} | {row['cache_bytes'] / 1e6:.0f} | "
                         f"{row['seconds_per_query_uncached']:.3f} | "
                         f"{row['seconds_first_search_writing_the_cache']:.2f} | "
                         f"{row['seconds_per_query']:.3f} | "
                         f"{row['seconds_per_query_in_batch_of_32']:.4f} |")
    context = results["context"]
    lines += ["", f"Command: `{context['command']}`; CPU {context['cpu']['model']}, {context['usable_cpus']} "
              f"usable CPUs, load average at start {context['load_average_start']}. Timings are only "
              "meaningful on a quiet machine; recall does not depend on load.", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the measurement and write the JSON and markdown reports."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, required=True, help="directory for the reports and work files")
    parser.add_argument("--model", type=Path, default=None,
                        help="artefact directory (default: the default model)")
    parser.add_argument("--corpus-size", type=int, default=None, help="corpus texts (default: all)")
    parser.add_argument("--queries", type=int, default=200, help="held-out queries")
    parser.add_argument("--multipliers", default="2,4,10", help="rescore multipliers, comma-separated")
    parser.add_argument("--timing-rows", type=int, default=1_000_000,
                        help="synthetic vectors timed (0: skip)")
    parser.add_argument("--repeats", type=int, default=5, help="timed single-query searches (median)")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime threads for embedding")
    parser.add_argument("--keep-synthetic", action="store_true", help="keep the synthetic timing shards")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="search_recall: %(message)s")
    multipliers = [int(m) for m in args.multipliers.split(",")]
    too_small = args.corpus_size is not None and args.corpus_size < K
    if args.queries < 1 or args.repeats < 1 or min(multipliers) < 1 or too_small:
        parser.error("--queries, --repeats and --multipliers must be at least 1, --corpus-size at least 10")
    model = (args.model or default_model_dir()).resolve()
    work = args.out / "work"
    work.mkdir(parents=True, exist_ok=True)
    corpus, query_texts, sources = corpus_and_queries(args.corpus_size, args.queries)
    logger.info("corpus %d texts, %d queries; embedding with %s", len(corpus), len(query_texts), model)
    runs = embed_runs(corpus, work, model, args.threads)
    embedder = Embedder.load(model, threads=args.threads)
    queries = embedder.embed(query_texts)
    results: dict[str, Any] = {
        "context": run_context(embedder.threads, usable_cpus(), argv=[sys.argv[0], *(argv or sys.argv[1:])]),
        "python": sysconfig.get_python_version(),
        "model": {"path": str(model), "name": embedder.manifest.model_name,
                  "variant": embedder.manifest.variant, "dim": embedder.dim},
        "corpus": {"size": len(corpus), "queries": len(query_texts), "sources": sources, "seed": SEED},
        "settings": {"k": K, "multipliers": multipliers, "repeats": args.repeats},
        "recall": measure_recall(runs, queries, multipliers, args.repeats),
    }
    if args.timing_rows:
        logger.info("timing exact search at %d synthetic vectors", args.timing_rows)
        results["scale"] = measure_scale(work, args.timing_rows, embedder.dim, model, args.repeats,
                                         args.keep_synthetic)
    (args.out / "search_recall.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    (args.out / "search_recall.md").write_text(render_markdown(results), encoding="utf-8")
    sys.stdout.write(render_markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
