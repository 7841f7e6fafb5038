"""The one answers loader (judge, report and publish): a bench's FastChat answer files, from
--answers-dir (a model_answer folder) or <output>/<bench>/model_answer/ (job.layout), read
into Answer records."""

from __future__ import annotations

from job.layout import answer_file, answers_prefix, model_of_answer_file
from job.names import check_model_name
from job.records import Answer, parse_records
from job.storage import LocalStorage, Storage, open_storage


def load_answers(
    output: str, bench: str, answers_dir: str | None = None, models: list[str] | None = None
) -> tuple[dict[str, list[Answer]], str]:
    """(model name -> its answer records, where they were read). `models`: only these models'
    files, those that exist; None: every answer file in the folder (org%2Fname.jsonl holds
    org/name's answers)."""
    storage: Storage = LocalStorage(answers_dir) if answers_dir else open_storage(output)
    prefix = "" if answers_dir else answers_prefix(bench)
    if models is None:
        keys = {
            model_of_answer_file(k[len(prefix) :]): k
            for k in storage.list(prefix)
            if k.endswith(".jsonl") and "/" not in k[len(prefix) :]
        }
    else:  # names from judgment files reach paths only in their safe form
        keys = {m: prefix + answer_file(check_model_name("model name (in the judgments)", m)) for m in models}
        keys = {m: k for m, k in keys.items() if storage.exists(k)}
    out = {m: parse_records(storage.read_bytes(k), Answer, storage.uri(k)) for m, k in keys.items()}
    return out, storage.uri(prefix)
