"""Benchmarks: speed and quality of embedrt variants against the field.

``embedrt bench`` (the tool, run by the CLI):

* :mod:`.run`: one run, sequencing the rest; :mod:`.workloads`: the texts, by length bucket.
* :mod:`.systems`: the protocol a compared system follows and embedrt's, torch's and
  fastembed's adapters; :mod:`.peers`: OpenVINO and sentence-transformers' ONNX backend;
  :mod:`.registry`: builds any of them from its spec.
* :mod:`.speed` and :mod:`.quality`: what is measured; :mod:`.machine`: CPU facts, CPU time
  and memory of a process; :mod:`.context`: where a run ran.
* :mod:`.report` and :mod:`.chart`: the JSON, Markdown and PNG.
* ``embedrt bench --profile``: :mod:`.profiling` (per-operator time and a roofline), with
  :mod:`.arithmetic` (FLOPs from the graph), :mod:`.peaks` (this machine's GEMM peaks),
  :mod:`.ort_trace` (onnxruntime's profiler output) and :mod:`.profile_report`.

:mod:`.studies`: one-off studies, each with its own command line.
"""
