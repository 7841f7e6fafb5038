"""S3Storage against a real S3 HTTP endpoint (moto server on 127.0.0.1)."""

from __future__ import annotations

import threading
import time

import pytest
from moto_s3 import ACCESS_KEY_ID, SECRET_ACCESS_KEY, S3Env, start_moto

from job.errors import JobError
from job.storage import open_storage
from job.storage.s3 import S3Storage, parse_s3_uri

pytestmark = pytest.mark.timeout(60)


def test_round_trip_listing_delete(s3: S3Env) -> None:
    st = open_storage(s3.uri("runs/r1"))
    assert isinstance(st, S3Storage)
    st.check_writable()
    assert st.write_bytes("b/shards/m/x.jsonl", b"one\n") is True
    st.write_bytes("b/shards/m/a.jsonl", b"two\n")
    st.write_bytes("b/model_answer/m.jsonl", "日本語\n".encode())
    st.write_bytes("other/z.json", b"{}")
    assert st.read_bytes("b/model_answer/m.jsonl").decode() == "日本語\n"
    assert st.exists("b/shards/m/x.jsonl") and not st.exists("b/shards/m/nope.jsonl")
    # sorted, relative to the run root, recursive, limited to the prefix
    assert st.list("b/") == ["b/model_answer/m.jsonl", "b/shards/m/a.jsonl", "b/shards/m/x.jsonl"]
    assert st.list("b/shards/m/") == ["b/shards/m/a.jsonl", "b/shards/m/x.jsonl"]
    assert st.list("missing/") == []
    # objects really live under the prefix in the bucket; the write check left nothing
    assert s3.list_keys() == [
        "runs/r1/b/model_answer/m.jsonl",
        "runs/r1/b/shards/m/a.jsonl",
        "runs/r1/b/shards/m/x.jsonl",
        "runs/r1/other/z.json",
    ]
    st.write_bytes("b/shards/m/x.jsonl", b"replaced\n")
    assert st.read_bytes("b/shards/m/x.jsonl") == b"replaced\n"
    st.delete("b/shards/m/x.jsonl")
    st.delete("b/shards/m/x.jsonl")  # idempotent
    assert not st.exists("b/shards/m/x.jsonl")
    assert st.uri("b/c.json") == f"s3://{s3.bucket}/runs/r1/b/c.json"
    with pytest.raises(JobError, match=r"s3://mtbench-test/runs/r1/b/gone.json: not found"):
        st.read_bytes("b/gone.json")


def test_bucket_root_and_uri_parsing(s3: S3Env) -> None:
    st = open_storage(f"s3://{s3.bucket}")
    st.write_bytes("k.txt", b"x")
    assert s3.list_keys() == ["k.txt"] and st.list("") == ["k.txt"]
    assert parse_s3_uri("s3://bkt/a/b/") == ("bkt", "a/b/")
    with pytest.raises(JobError, match="invalid S3 bucket name"):
        parse_s3_uri("s3://B_ad/x")


def test_if_absent_is_a_conditional_write(s3: S3Env) -> None:
    st = open_storage(s3.uri("run"))
    assert st.write_bytes("m.json", b"first", if_absent=True) is True
    assert st.write_bytes("m.json", b"second", if_absent=True) is False
    assert st.read_bytes("m.json") == b"first"


def test_conditional_write_race_has_one_winner(s3: S3Env) -> None:
    # separate clients (as separate pods would have), released together
    writers = [open_storage(s3.uri("race")) for _ in range(8)]

    def write(i: int, r: int, barrier: threading.Barrier, results: dict[int, bool]) -> None:
        barrier.wait()
        results[i] = writers[i].write_bytes(
            f"shard-{r}.manifest.json", f"writer {i}".encode(), if_absent=True
        )

    for round_ in range(3):
        barrier = threading.Barrier(len(writers))
        results: dict[int, bool] = {}
        threads = [
            threading.Thread(target=write, args=(i, round_, barrier, results)) for i in range(len(writers))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [i for i, ok in results.items() if ok]
        assert len(results) == len(writers) and len(winners) == 1, results
        assert s3.get(f"race/shard-{round_}.manifest.json") == f"writer {winners[0]}".encode()


def test_large_object_goes_multipart(s3: S3Env) -> None:
    st = S3Storage(s3.uri("big"), multipart_threshold=5 * 2**20, multipart_chunk=5 * 2**20)
    data = bytes(range(256)) * (12 * 2**20 // 256 + 3)  # 12 MiB + 768 B -> 3 parts
    assert st.write_bytes("blob.bin", data) is True
    head = s3.client().head_object(Bucket=s3.bucket, Key="big/blob.bin")
    assert head["ETag"].strip('"').endswith("-3"), head["ETag"]  # a multipart ETag
    assert st.read_bytes("blob.bin") == data
    # the conditional multipart path: S3 checks If-None-Match at Complete
    assert st.write_bytes("cond.bin", data, if_absent=True) is True
    assert st.write_bytes("cond.bin", data[::-1], if_absent=True) is False
    assert st.read_bytes("cond.bin") == data
    assert s3.client().list_multipart_uploads(Bucket=s3.bucket).get("Uploads", []) == []


def test_missing_bucket_is_a_clear_error(s3: S3Env) -> None:
    st = open_storage("s3://no-such-bucket-here/run")
    with pytest.raises(JobError) as e:
        st.check_writable()
    msg = str(e.value)
    assert "s3://no-such-bucket-here/run" in msg and "does not exist" in msg and "\n" not in msg
    with pytest.raises(JobError, match="bucket 'no-such-bucket-here' does not exist"):
        st.list("x/")


def test_missing_credentials_is_a_clear_error(s3: S3Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(JobError, match=r"s3://mtbench-test/run.*no AWS credentials found"):
        open_storage(s3.uri("run")).check_writable()


def test_unreachable_endpoint_fails_bounded_and_names_it(s3: S3Env, monkeypatch: pytest.MonkeyPatch) -> None:
    with start_moto() as private:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", private.endpoint)
        st = open_storage(s3.uri("run"))
        import boto3

        boto3.session.Session().client("s3", endpoint_url=private.endpoint).create_bucket(Bucket=s3.bucket)
        st.write_bytes("a.txt", b"a")
        assert st.read_bytes("a.txt") == b"a"
    # the server is gone now
    t0 = time.monotonic()
    with pytest.raises(JobError) as e:
        st.read_bytes("a.txt")
    elapsed = time.monotonic() - t0
    msg = str(e.value)
    assert msg.startswith("cannot read s3://mtbench-test/run/a.txt: S3 endpoint http://127.0.0.1:")
    assert "unreachable" in msg and "--s3-endpoint-url" in msg
    assert elapsed < 20, f"retries were not bounded: {elapsed:.1f}s"
    for secret in (ACCESS_KEY_ID, SECRET_ACCESS_KEY):
        assert secret not in msg


def test_endpoint_from_job_env_wins(s3: S3Env, monkeypatch: pytest.MonkeyPatch) -> None:
    # a wrong AWS_ENDPOINT_URL_S3 is overridden by JOB_S3_ENDPOINT_URL (--s3-endpoint-url)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    monkeypatch.setenv("JOB_S3_ENDPOINT_URL", s3.endpoint)
    st = open_storage(s3.uri("ep"))
    st.write_bytes("k", b"v")
    assert s3.get("ep/k") == b"v"
