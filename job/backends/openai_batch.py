"""`--openai-batch`: a run's requests as one OpenAI Batch API batch (half the price, its own
rate limit, results within the 24 h completion window).

generate(requests) uploads them as a JSONL file (POST /v1/files, purpose batch; lines
{custom_id, method, url, body}, each body what the streaming backend would send), creates
the batch (POST /v1/batches), remembers it in a BatchState, polls it (GET /v1/batches/{id},
bounded backoff, one progress line per poll) and reads its output and error files. Each
request gets the GenResult the streaming path would give: a failed line is api_error with
its message; a line the batch never ran (expired, cancelled, failed) is api_error "batch
expired" (etc.), so the next run asks it again.

The state (batch id, each custom_id's body hash) is saved before the first poll, so a run
killed while waiting resumes polling the same batch instead of paying for it twice; it is
reused only when every request of the new run is in it with the same body. A BatchState the
caller passes is cleared by the caller once it has stored the results (the judge: after the
rows are appended), so a run killed between the results' return and their storing collects
the same batch again instead of paying twice; the backend's own MemoryState is cleared here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import defaultdict
from typing import Any, Protocol

from job.backends.base import GenRequest, GenResult, ProgressFn
from job.backends.openai_api import OpenAIBackend
from job.backends.openai_wire import _error_message, _Failed, _Retryable, _to_result
from job.errors import JobError
from job.signals import critical

log = logging.getLogger(__name__)

ENDPOINT = "/v1/chat/completions"
TERMINAL = ("completed", "failed", "expired", "cancelled")
NOT_RUN = {"expired": "batch expired", "cancelled": "batch cancelled"}
"""What a request the batch never ran gets, by the batch's final status."""
MAX_REQUESTS = 50_000
"""The Batch API's limit of requests per input file."""


class BatchState(Protocol):
    """Where a submitted batch is remembered between runs (the judge: next to its judgments)."""

    def load(self) -> dict[str, Any] | None: ...

    def save(self, state: dict[str, Any]) -> None: ...

    def clear(self) -> None: ...


class MemoryState:
    """A BatchState that lives as long as the backend (no resume across runs)."""

    def __init__(self) -> None:
        self.state: dict[str, Any] | None = None

    def load(self) -> dict[str, Any] | None:
        return self.state

    def save(self, state: dict[str, Any]) -> None:
        self.state = state

    def clear(self) -> None:
        self.state = None


def body_sha(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class OpenAIBatchBackend(OpenAIBackend):
    """openai/<model> through the Batch API: generate() is one batch, however many requests."""

    streams_conversations = False

    def __init__(
        self,
        spec: str,
        model: str,
        *,
        batch_state: BatchState | None = None,
        openai_batch_wait: float | None = None,
        poll_min: float | None = None,
        poll_max: float = 60.0,
        **options: Any,
    ):
        super().__init__(spec, model, **options)
        if openai_batch_wait is not None and openai_batch_wait < 0:
            raise JobError(f"--openai-batch-wait must be >= 0 seconds, got {openai_batch_wait}")
        self.state = batch_state or MemoryState()
        self.owns_state = batch_state is None
        """a caller's state is the caller's to clear, after it has stored the results"""
        self.wait = openai_batch_wait
        # JOB_BATCH_POLL_SECONDS: tests shrink the first wait between polls
        self.poll_min = (
            poll_min if poll_min is not None else float(os.environ.get("JOB_BATCH_POLL_SECONDS") or 5.0)
        )
        self.poll_max = max(poll_max, self.poll_min)

    def generate(self, requests: list[GenRequest], progress: ProgressFn | None = None) -> list[GenResult]:
        if not requests:
            return []
        if len(requests) > MAX_REQUESTS:
            raise JobError(
                f"{len(requests)} requests are more than one batch takes ({MAX_REQUESTS}); "
                "judge fewer models per run (--model-list)"
            )
        bodies = [self._body(r) for r in requests]
        client = self._batch_client()
        state, ids = self._resume(client, bodies)
        if state is None:
            state, ids = self._submit(client, requests, bodies)
        batch = self._poll(client, state["batch_id"])
        got = self._read_results(client, batch)
        missing = self._not_run(batch)
        results = [got.get(cid) or self._fail(missing) for cid in ids]
        if self.owns_state:  # finished: a later call has nothing to resume
            self.state.clear()
        if progress:
            progress(len(results), sum(r.num_tokens for r in results))
        return results

    # -- submission and resume ------------------------------------------------------

    def _batch_client(self) -> Any:
        from openai import OpenAI

        # the client's own retries cover a failed upload/poll (connection, 429, 5xx)
        return OpenAI(
            api_key=self._key,
            base_url=self.base_url,
            max_retries=self.max_retries,
            timeout=self.request_timeout,
        )

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        import openai

        try:
            return fn(*args, **kwargs)
        except openai.APIStatusError as e:
            detail = f"HTTP {e.status_code}: {_error_message(e)}"
        except openai.APIError as e:
            detail = f"{type(e).__name__}: {e}"
        hint = " (check OPENAI_API_KEY)" if "HTTP 401" in detail else ""
        raise JobError(
            f"{self.spec} Batch API at {self.endpoint}: {what} failed: {self._scrub(detail)}{hint}"
        )

    def _submit(
        self, client: Any, requests: list[GenRequest], bodies: list[dict[str, Any]]
    ) -> tuple[dict[str, Any], list[str]]:
        ids = [f"r{i}" for i in range(len(bodies))]
        data = "".join(
            json.dumps({"custom_id": c, "method": "POST", "url": ENDPOINT, "body": b}, ensure_ascii=False)
            + "\n"
            for c, b in zip(ids, bodies, strict=True)
        ).encode()
        upload = self._call(
            "upload", client.files.create, file=("judge_requests.jsonl", data), purpose="batch"
        )
        # a SIGTERM waits until the batch is remembered: a batch is never paid for and then lost
        with critical():
            batch = self._call(
                "create batch", client.batches.create,
                input_file_id=upload.id, endpoint=ENDPOINT, completion_window="24h",
            )  # fmt: skip
            state = {
                "batch_id": batch.id, "input_file_id": upload.id, "endpoint": self.endpoint,
                "model": self.model, "created_at": time.time(),
                "lines": {c: {"sha256": body_sha(b), "key": r.key} for c, b, r in zip(ids, bodies, requests, strict=True)},
            }  # fmt: skip
            self.state.save(state)
        log.info("%s: submitted batch %s (%d requests, file %s)", self.spec, batch.id, len(ids), upload.id)
        return state, ids

    def _resume(self, client: Any, bodies: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, list[str]]:
        """The stored batch and the custom_id of each request, when it holds every one of them."""
        state = self.state.load()
        if not state:
            return None, []
        ids = _match(state, bodies) if state.get("endpoint") == self.endpoint else None
        if ids is None:
            log.warning(
                "stored batch %s was made for other requests or another endpoint: not reused (cancelled "
                "if still running); submitting a new one",
                state.get("batch_id"),
            )
            self._discard(client, state)
            return None, []
        if not self._exists(client, str(state["batch_id"])):
            log.warning(
                "stored batch %s is not known at %s: submitting a new one", state["batch_id"], self.endpoint
            )
            self.state.clear()
            return None, []
        log.info("%s: resuming batch %s (submitted before; not sent again)", self.spec, state["batch_id"])
        return state, ids

    def _exists(self, client: Any, batch_id: str) -> bool:
        import openai

        try:
            client.batches.retrieve(batch_id)
        except openai.NotFoundError:
            return False
        except openai.APIError:
            pass  # anything else: polling will say what is wrong
        return True

    def _discard(self, client: Any, state: dict[str, Any]) -> None:
        import openai

        try:  # best effort: only a batch still running can be cancelled
            client.batches.cancel(str(state.get("batch_id")))
        except openai.APIError as e:
            log.debug("cancel %s: %s", state.get("batch_id"), self._scrub(str(e)))
        self.state.clear()

    # -- polling and results ----------------------------------------------------------

    def _poll(self, client: Any, batch_id: str) -> Any:
        t0 = time.monotonic()
        delay = self.poll_min
        polls = 0
        while True:
            batch = self._call("poll", client.batches.retrieve, batch_id)
            polls += 1
            counts = batch.request_counts
            done = (
                f"{counts.completed + counts.failed}/{counts.total} done, {counts.failed} failed"
                if counts
                else ""
            )
            log.info(
                "batch %s: %s %s (poll %d, %.0fs)", batch_id, batch.status, done, polls, time.monotonic() - t0
            )
            if batch.status in TERMINAL:
                return batch
            waited = time.monotonic() - t0
            if self.wait is not None and waited + delay > self.wait:
                raise JobError(
                    f"batch {batch_id} is still {batch.status} after {waited:.0f}s (--openai-batch-wait "
                    f"{self.wait:g}); its id is stored: run the same command again to collect it"
                )
            time.sleep(delay)
            delay = min(self.poll_max, delay * 2)

    def _read_results(self, client: Any, batch: Any) -> dict[str, GenResult]:
        out: dict[str, GenResult] = {}
        for fid in (batch.output_file_id, batch.error_file_id):
            if not fid:
                continue
            text = self._call("download results", client.files.content, fid).text
            for line in text.splitlines():
                try:
                    row = json.loads(line) if line.strip() else None
                except ValueError:  # its request then counts as not run (api_error, asked again)
                    log.warning("batch %s: a line of file %s is not JSON: skipped", batch.id, fid)
                    continue
                if isinstance(row, dict) and isinstance(row.get("custom_id"), str):
                    out[row["custom_id"]] = self._line_result(row)
        return out

    def _line_result(self, row: dict[str, Any]) -> GenResult:
        """One output/error file line -> the GenResult the streaming path gives that reply."""
        from openai.types.chat import ChatCompletion
        from pydantic import ValidationError

        err, resp = row.get("error"), row.get("response")
        if isinstance(err, dict):  # the batch never ran it
            code = err.get("code")
            return self._fail(
                "batch expired" if code == "batch_expired" else self._scrub(f"{code}: {err.get('message')}")
            )
        if not isinstance(resp, dict):
            return self._fail("batch result line without a response")
        status, body = resp.get("status_code"), resp.get("body")
        if status != 200:
            inner = body.get("error") if isinstance(body, dict) else None
            message = inner.get("message") if isinstance(inner, dict) else body
            return self._fail(self._scrub(f"HTTP {status}: {message}"))
        try:
            res = _to_result(ChatCompletion.model_validate(body))
        except (_Retryable, _Failed) as e:  # a reply of no use, billed all the same
            return self._fail(self._scrub(str(e)), e.usage)
        except ValidationError as e:
            return self._fail(self._scrub(f"malformed response: {e.errors()[0].get('msg')}"))
        self.stats["ok"] += 1
        return res

    def _not_run(self, batch: Any) -> str:
        if batch.status == "failed":
            errs = batch.errors.data if batch.errors and batch.errors.data else []
            detail = "; ".join(f"{e.code}: {e.message}" for e in errs[:3]) or "no reason given"
            return self._scrub(f"batch failed: {detail}")
        return NOT_RUN.get(batch.status, "no result for this request in the batch output")


def _match(state: dict[str, Any], bodies: list[dict[str, Any]]) -> list[str] | None:
    """The stored batch's custom_id for each body (equal bodies share the pool), else None."""
    pool: dict[str, list[str]] = defaultdict(list)
    for cid, line in (state.get("lines") or {}).items():
        pool[str(line.get("sha256"))].append(cid)
    ids: list[str] = []
    for body in bodies:
        free = pool.get(body_sha(body))
        if not free:
            return None
        ids.append(free.pop(0))
    return ids
