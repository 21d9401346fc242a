"""binaudit benchmarks (``make bench`` → ``bench/run.sh``; GPU: ``bench/gpu.sh``).

Not part of the test suite: they measure, they do not assert. Each module measures one thing;
``bench.run`` (CPU/any device) and ``bench.gpu`` (CUDA) orchestrate them and ``bench.report``
turns the results into JSON, a Markdown table and plots.
"""
