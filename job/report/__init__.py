"""The report stage (`job report`): scores from the judgments and answers, as files.

Owns: aggregation (aggregate.py: FastChat's and Swallow's tables, bootstrap intervals),
bench inference (bench.py), Japanese character share (jachars.py), the runner that loads
judgments and answers and writes report.json/md, scores.csv (runner.py), markdown
(markdown.py), HTML (html.py), plots (plots.py), the question browser data (questions.py)
and publishing a report to storage (publish.py).

Imports core, job.benches, job.storage and, of the judge stage, only its judgment store
(job.judge.store, the records it wrote): never the judge runner, generate, reduce, gate,
pipeline or commands (import-linter, pyproject.toml).
"""
