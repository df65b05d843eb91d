"""The corpus job: files in, vectors out, resumable (``embedrt embed-corpus``).

A pipeline of three parts that any engine schedules: the reader (:mod:`.reader`: files ->
units -> chunks of id + text, streamed), the embedding step (:mod:`.embedding`: the
runtime's :class:`~embedrt.runtime.Embedder` plus a precision) and the writer
(:mod:`.writer`: units -> Parquet shards, atomically), with the run record
(:mod:`.record`: ``run.json``) naming what is finished. :func:`embed_corpus` plans a job
and runs it on an engine (:mod:`.local_engine` in this process).

    >>> from embedrt.corpus import CorpusOptions, embed_corpus
    >>> embed_corpus(["docs.jsonl"], "vectors/", "models/all-MiniLM-L6-v2/int8",
    ...              CorpusOptions(precision="int8", on_bad_row="skip"))

Parquet needs pyarrow (the [corpus] extra), imported where it is used.
"""

from .errors import BadRowError, CorpusError, CorpusInputError, RunMismatchError
from .job import CorpusOptions, CorpusResult, Progress, embed_corpus

__all__ = [
    "BadRowError",
    "CorpusError",
    "CorpusInputError",
    "CorpusOptions",
    "CorpusResult",
    "Progress",
    "RunMismatchError",
    "embed_corpus",
]
