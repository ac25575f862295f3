"""``mrsa eval``: accuracy of single sampling, majority voting and RSA on a dataset.

One command runs every configuration over the same problems, through a running service (SSE
progress chunks) or the embedded engine in-process (the run's progress events), and reports
per round what the RSA paper reports: mean accuracy over the population (pass@1), majority-vote
accuracy, pass@N, with the tokens spent and the wall time. Modules:

- :mod:`.datasets`: JSONL problems and a seeded generator of arithmetic word problems;
- :mod:`.grading`: answer checking with math-verify;
- :mod:`.scoring`: per-round metrics of one run, and their means over a dataset;
- :mod:`.backends`: one RSA run as a stream of progress-event dicts (HTTP or in-process);
- :mod:`.runner`: configurations, concurrency, progress bars, the results document;
- :mod:`.report`: the console table and the PNG plot.
"""
