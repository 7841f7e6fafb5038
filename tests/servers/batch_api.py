"""The OpenAI Batch API of the test server (tests/servers/openai_server.py): files and batches.

Routes, shaped as api.openai.com's (openai.types.FileObject, openai.types.Batch):
- `POST /v1/files` (multipart: purpose, file), `GET /v1/files/{id}`, `GET /v1/files/{id}/content`
- `POST /v1/batches` {input_file_id, endpoint, completion_window}, `GET /v1/batches/{id}`,
  `POST /v1/batches/{id}/cancel`

Each input line goes through the server's own chat machinery (reply, fault script, API key,
models), recorded in `server.requests` like a direct call with `batch_id` set. Successful lines
land in the output file, failed ones (non-200) in the error file as
`{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error": null}`.

Knobs (attributes of the server, changeable while it runs):
- `batch_polls`: retrievals that answer in_progress before the batch is processed (default 0:
  the first retrieval after creation completes it);
- `batch_expire_after`: process only that many lines, then the batch is `expired` and the
  rest get `{"response": null, "error": {"code": "batch_expired", ...}}` in the error file.

`batches` (id -> BatchRecord) and `uploads` (file ids, in order) say what was asked.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from servers.replies import _error as _api_error
from servers.replies import _json

if TYPE_CHECKING:
    from servers.openai_server import OpenAIServer

Response = tuple[int, dict[str, str], bytes]

EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."
ENDPOINTS = ("/v1/chat/completions",)


def _error(status: int, message: str) -> Response:
    return _api_error(status, message, "invalid_request_error")


def parse_multipart(content_type: str, raw: bytes) -> dict[str, tuple[str | None, bytes]]:
    """name -> (filename, bytes) of a multipart/form-data body."""
    head = f"Content-Type: {content_type}\r\n\r\n".encode()
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
    if not msg.is_multipart():
        return {}
    out: dict[str, tuple[str | None, bytes]] = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        out[str(name)] = (part.get_filename(), part.get_payload(decode=True) or b"")
    return out


@dataclass
class BatchRecord:
    obj: dict[str, Any]
    headers: dict[str, str]
    polls: int = 0
    cancelled: bool = False
    lines_sent: list[str] = field(default_factory=list)
    """custom_ids of the lines the server ran, in order."""


class BatchAPI:
    def __init__(self, server: OpenAIServer):
        self.server = server
        self.files: dict[str, tuple[dict[str, Any], bytes]] = {}
        self.batches: dict[str, BatchRecord] = {}
        self.uploads: list[str] = []

    async def handle(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> Response:
        srv = self.server
        if srv.api_key is not None and headers.get("authorization") != f"Bearer {srv.api_key}":
            return _error(401, "Incorrect API key provided.")
        parts = path.removeprefix("/v1").strip("/").split("/")
        route = (method, parts[0], len(parts), parts[-1])
        if route[:3] == ("POST", "files", 1):
            return self._upload(headers.get("content-type", ""), raw)
        if route[:3] == ("GET", "files", 2) and parts[1] in self.files:
            return _json(200, self.files[parts[1]][0])
        if route == ("GET", "files", 3, "content") and parts[1] in self.files:
            return 200, {"content-type": "application/octet-stream"}, self.files[parts[1]][1]
        if route[:3] == ("POST", "batches", 1):
            return self._create(headers, raw)
        batch = self.batches.get(parts[1]) if len(parts) > 1 and parts[0] == "batches" else None
        if batch is not None and route[:3] == ("GET", "batches", 2):
            await self._advance(batch)
            return _json(200, batch.obj)
        if batch is not None and route == ("POST", "batches", 3, "cancel"):
            return self._cancel(batch)
        return _error(404, f"no such object or route: {method} {path}")

    # -- files ----------------------------------------------------------------------

    def _add_file(self, content: bytes, filename: str, purpose: str) -> dict[str, Any]:
        fid = f"file-{len(self.files) + 1:04d}"
        obj = {"id": fid, "object": "file", "bytes": len(content), "created_at": int(time.time()),
               "filename": filename, "purpose": purpose, "status": "processed", "expires_at": None,
               "status_details": None}  # fmt: skip
        self.files[fid] = (obj, content)
        return obj

    def _upload(self, content_type: str, raw: bytes) -> Response:
        form = parse_multipart(content_type, raw)
        if "file" not in form or "purpose" not in form:
            return _error(400, "multipart form needs the fields 'file' and 'purpose'")
        purpose = form["purpose"][1].decode()
        if purpose != "batch":
            return _error(400, f"this test server takes purpose 'batch' only, got {purpose!r}")
        obj = self._add_file(form["file"][1], form["file"][0] or "upload.jsonl", purpose)
        self.uploads.append(obj["id"])
        return _json(200, obj)

    # -- batches --------------------------------------------------------------------

    def _create(self, headers: dict[str, str], raw: bytes) -> Response:
        try:
            body = json.loads(raw)
        except ValueError:
            return _error(400, "body must be JSON")
        fid = body.get("input_file_id")
        if fid not in self.files:
            return _error(400, f"No such File object: {fid}")
        if body.get("endpoint") not in ENDPOINTS or body.get("completion_window") != "24h":
            return _error(400, "endpoint must be /v1/chat/completions and completion_window 24h")
        now = int(time.time())
        bid = f"batch_{len(self.batches) + 1:04d}"
        obj = {"id": bid, "object": "batch", "endpoint": body["endpoint"], "errors": None,
               "input_file_id": fid, "completion_window": "24h", "status": "validating",
               "output_file_id": None, "error_file_id": None, "created_at": now,
               "in_progress_at": None, "expires_at": now + 86400, "finalizing_at": None,
               "completed_at": None, "failed_at": None, "expired_at": None, "cancelling_at": None,
               "cancelled_at": None, "request_counts": {"total": 0, "completed": 0, "failed": 0},
               "metadata": body.get("metadata")}  # fmt: skip
        self.batches[bid] = BatchRecord(obj, headers)
        return _json(200, obj)

    def _cancel(self, batch: BatchRecord) -> Response:
        if batch.obj["status"] in ("validating", "in_progress"):
            batch.cancelled = True
            batch.obj.update(status="cancelling", cancelling_at=int(time.time()))
            return _json(200, batch.obj)
        return _error(400, f"Cannot cancel a batch with status '{batch.obj['status']}'.")

    async def _advance(self, batch: BatchRecord) -> None:
        """One retrieval's worth of progress: in_progress for `batch_polls` polls, then the lines."""
        obj = batch.obj
        if obj["status"] in ("completed", "failed", "expired", "cancelled"):
            return
        if batch.cancelled:
            obj.update(status="cancelled", cancelled_at=int(time.time()))
            return
        lines, problem = self._input_lines(obj["input_file_id"])
        if problem:
            obj.update(
                status="failed", failed_at=int(time.time()), errors={"object": "list", "data": [problem]}
            )
            return
        obj["request_counts"]["total"] = len(lines)
        batch.polls += 1
        if batch.polls <= self.server.batch_polls:
            obj.update(status="in_progress", in_progress_at=obj["in_progress_at"] or int(time.time()))
            return
        await self._run_lines(batch, lines)

    def _input_lines(self, fid: str) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        lines: list[dict[str, Any]] = []
        seen: set[str] = set()
        for n, text in enumerate(self.files[fid][1].decode().splitlines(), 1):
            try:
                line = json.loads(text)
            except ValueError:
                return [], {"code": "invalid_json_line", "message": "not JSON", "line": n, "param": None}
            cid = line.get("custom_id")
            ok = (
                line.get("method") == "POST"
                and line.get("url") in ENDPOINTS
                and isinstance(line.get("body"), dict)
            )
            if not isinstance(cid, str) or cid in seen or not ok:
                return [], {"code": "invalid_request", "message": f"bad line {n}", "line": n, "param": None}
            seen.add(cid)
            lines.append(line)
        return lines, None

    async def _run_lines(self, batch: BatchRecord, lines: list[dict[str, Any]]) -> None:
        limit = self.server.batch_expire_after
        out: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for i, line in enumerate(lines):
            cid = line["custom_id"]
            if limit is not None and i >= limit:
                errors.append({"id": f"batch_req_{cid}", "custom_id": cid, "response": None,
                               "error": {"code": "batch_expired", "message": EXPIRED_MESSAGE}})  # fmt: skip
                continue
            status, body = await self.server.batch_line(batch.headers, line["body"], batch.obj["id"])
            batch.lines_sent.append(cid)
            row = {"id": f"batch_req_{cid}", "custom_id": cid, "error": None,
                   "response": {"status_code": status, "request_id": f"req_{cid}", "body": body}}  # fmt: skip
            (out if status == 200 else errors).append(row)
        now = int(time.time())
        counts = {"total": len(lines), "completed": len(out), "failed": len(errors)}
        final = "expired" if limit is not None and len(lines) > limit else "completed"
        bid = batch.obj["id"]
        batch.obj.update(status=final, finalizing_at=now, request_counts=counts,
                         **{f"{final}_at": now})  # fmt: skip
        if out:
            batch.obj["output_file_id"] = self._add_file(_jsonl(out), f"{bid}_output.jsonl", "batch_output")[
                "id"
            ]
        if errors:
            batch.obj["error_file_id"] = self._add_file(_jsonl(errors), f"{bid}_error.jsonl", "batch_output")[
                "id"
            ]


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()
