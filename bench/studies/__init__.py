"""One-off studies: each measures one question in one run, with its own command line.

Not part of ``embedrt bench``; each is run as ``python -m embedrt.bench.studies.<name>`` and
writes its JSON and Markdown report to ``--out`` (the committed ones are in ``bench/results/``).
They measure with the bench's own parts (``embedrt.bench.speed``, ``quality``, ``machine``,
``context``, ``workloads``).

* :mod:`.int8_recipes`: every int8 recipe tried for all-MiniLM-L6-v2, fidelity and speed.
* :mod:`.search_recall`: recall@10 of int8 and ubinary corpus search against float32; exact-search time.
* :mod:`.corpus_job`: the corpus job against offline ``Embedder.embed`` on the same texts.
* :mod:`.corpus_ray`: the corpus job on a local Ray against the local engine.
* :mod:`.serve_load`: ``embedrt serve`` under closed-loop load (and, with ``--open-loop``,
  :mod:`.serve_open_loop`: Poisson arrivals at fractions of its capacity); the raw HTTP
  client, the texts and the server start both use are in :mod:`.serve_client`.
"""
