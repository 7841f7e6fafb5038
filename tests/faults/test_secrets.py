"""Security (issue 8): no secret reaches a log, manifest, report, record or error message.

A full pipeline runs with sentinel values in OPENAI_API_KEY, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN and HF_TOKEN, at DEBUG log level, against a real
S3 endpoint (moto server) and a real OpenAI-compatible HTTP server (openai/ generation and
judge), including failures: a 401 whose body echoes a wrong key, S3 errors (a missing
bucket, a stopped endpoint), and --dry-run of every stage. Then every artifact is scanned:
stdout/stderr of every command, every file under the working dir (cache, report dir, JUnit
XML, published reports) and every object in the bucket, for each sentinel in raw, base64,
URL-encoded and JSON-escaped form, and for fragments of it.
"""

from __future__ import annotations

import base64
import json
import secrets
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from moto_s3 import BUCKET, s3_env_vars, start_moto
from servers.openai_server import OpenAIServer


def _sentinel(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(16)}"


SENTINELS = {
    "OPENAI_API_KEY": _sentinel("sk-SENTINEL-openai-"),
    "AWS_ACCESS_KEY_ID": "AKIA" + secrets.token_hex(8).upper(),
    "AWS_SECRET_ACCESS_KEY": _sentinel("SENTINEL/aws+secret="),
    "AWS_SESSION_TOKEN": _sentinel("SENTINEL//session+token=="),
    "HF_TOKEN": _sentinel("hf_SENTINEL"),
}
WRONG_KEY = _sentinel("sk-SENTINEL-wrong-")  # sent to a server that wants another key: 401 echoes it


def _forms(secret: str) -> set[str]:
    """The ways a secret can show up in a file: as is, encoded, or a recognisable piece."""
    out = {
        secret,
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote_plus(secret),
        json.dumps(secret)[1:-1],
    }
    for pad in ("", "x", "xx"):  # base64 of a string containing the secret, at each alignment
        enc = base64.b64encode((pad + secret).encode()).decode()
        out.add(enc[len(pad) * 2 : -4] if len(enc) > 12 else enc)
    core = secret[-32:]  # the random part: any 12 characters of it in a row are a leak
    out |= {core[i : i + 12] for i in range(0, len(core) - 11, 4)}
    return {f for f in out if len(f) >= 10}


LEAKS = {name: _forms(value) for name, value in [*SENTINELS.items(), ("wrong OPENAI_API_KEY", WRONG_KEY)]}


def _scan(blobs: dict[str, bytes]) -> list[str]:
    found = []
    for where, data in blobs.items():
        text = data.decode("utf-8", "replace")
        for name, forms in LEAKS.items():
            for f in forms:
                if f in text:
                    found.append(f"{name} ({f!r}) in {where}")
                    break
    return found


def _judge_reply(body: dict[str, Any]) -> str:
    last = body["messages"][-1]["content"]
    return f"answer to {len(last)} chars. Rating: [[7]]"


@pytest.mark.timeout(280)
def test_no_secret_in_any_artifact(run_job: Any, tmp_path: Path) -> None:
    outputs: dict[str, bytes] = {}
    work = tmp_path / "work"
    work.mkdir()
    with start_moto() as moto, OpenAIServer(_judge_reply, api_key=SENTINELS["OPENAI_API_KEY"]) as api:
        env = {**s3_env_vars(moto.endpoint, str(tmp_path)), **SENTINELS}
        env["JOB_S3_MAX_ATTEMPTS"] = "2"
        import boto3

        s3 = boto3.client(
            "s3", endpoint_url=moto.endpoint, region_name="us-east-1",
            aws_access_key_id="x", aws_secret_access_key="y",
        )  # fmt: skip
        s3.create_bucket(Bucket=BUCKET)
        root = f"s3://{BUCKET}/runs"
        common = ["--bench", "smoke", "--first-n", "3"]
        model = ["--model", "openai/test-model", "--base-url", api.url, "--model-name", "m1"]
        judge = ["--judge-model", "openai/test-model", "--judge-base-url", api.url]
        judge_cmd = ["--judge-model", "openai/test-model", "--base-url", api.url]  # `job judge` spelling

        def job(tag: str, *args: str, code: int | None = 0, extra_env: dict[str, str] | None = None) -> None:
            res = run_job("--log-level", "DEBUG", *args, env={**env, **(extra_env or {})}, cwd=work)
            outputs[f"{tag}: stdout"] = res.stdout.encode()
            outputs[f"{tag}: stderr"] = res.stderr.encode()
            if code is not None:
                assert res.returncode == code, (tag, res.returncode, res.stderr[-3000:])

        # dry runs first: they print plans and configs
        job("run --dry-run", "run", *common, *model, *judge, "--output", root, "--dry-run")
        job("generate --dry-run", "generate", *common, *model, "--output", root, "--dry-run")
        # the whole pipeline, with report dir, publish and JUnit XML
        job(
            "run", "run", *common, *model, *judge, "--output", root, "--publish", f"s3://{BUCKET}/pub",
            "--report-dir", str(work / "report"), "--junit-xml", str(work / "junit.xml"), code=None,
        )  # fmt: skip
        assert (work / "report" / "report.json").is_file(), outputs["run: stderr"][-3000:]
        job("judge --dry-run", "judge", *common, *judge_cmd, "--output", root, "--dry-run",
            "--dump", str(work / "dump.jsonl"))  # fmt: skip
        job("report", "report", "--bench", "smoke", "--output", root, "--publish", str(work / "pub"))
        # failures: a wrong key (401 echoes it), a missing bucket, a stopped endpoint
        job(
            "judge 401", "judge", "--bench", "smoke", "--first-n", "3", *judge_cmd, "--judge-name", "wrongkey",
            "--output", root, code=2, extra_env={"OPENAI_API_KEY": WRONG_KEY},
        )  # fmt: skip
        job("generate 401", "generate", *common, *model, "--model-name", "m2", "--output", root, code=None,
            extra_env={"OPENAI_API_KEY": WRONG_KEY})  # fmt: skip
        job("missing bucket", "generate", *common, "--model", "mock/echo", "--output", "s3://no-such-bucket/x",
            code=2)  # fmt: skip
        objects = {
            f"s3://{BUCKET}/{o['Key']}": s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
            for o in page.get("Contents", [])
        }
        moto.stop()
        job("endpoint down", "reduce", "--bench", "smoke", "--output", root, code=None)
        # the sentinels were really used: the right key got answers, the wrong one 401s
        sent = {r.headers.get("authorization") for r in api.chat_requests}
        assert sent == {f"Bearer {SENTINELS['OPENAI_API_KEY']}", f"Bearer {WRONG_KEY}"}, sent
    assert " DEBUG " in outputs["run: stderr"].decode()  # the scan covers debug logging
    # the pipeline really ran and really stored its artifacts in the bucket
    keys = "\n".join(objects)
    for part in ("smoke/model_answer/m1.jsonl", "model_judgment/test-model_single.jsonl", "reports/report.json",
                 "pub/latest/smoke/m1.json", ".manifest.json"):  # fmt: skip
        assert part in keys, (part, keys)
    assert "401" in outputs["judge 401: stderr"].decode().splitlines()[-1], outputs["judge 401: stderr"][
        -2000:
    ]
    files = {str(p): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert len(files) > 10
    leaks = _scan({**outputs, **objects, **files})
    assert not leaks, "\n".join(leaks)


def test_the_scan_finds_a_leak() -> None:
    """The scanner itself: each form of a sentinel is found, so a clean scan means something."""
    key = SENTINELS["AWS_SECRET_ACCESS_KEY"]
    for blob in (
        f"error: key={key}",
        base64.b64encode(f"user:{key}".encode()).decode(),
        urllib.parse.quote(key, safe=""),
        json.dumps({"k": key}),
        f"masked {key[:-20]}***",
    ):
        assert _scan({"x": blob.encode()}), blob
    assert not _scan({"x": b"AKIA**** sk-...wxyz nothing here"})
