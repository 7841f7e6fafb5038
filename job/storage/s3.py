"""Storage on s3://bucket/prefix (AWS S3, MinIO, Ceph RGW, R2, ...) through boto3.

- A write is one PUT: S3 never shows a partial object. Objects at or above the
  multipart threshold go through boto3's managed multipart upload, which S3 also
  only makes visible once the upload is completed.
- `if_absent=True` is an S3 conditional write (`If-None-Match: *`): of two tasks
  racing for the same key (a shard's manifest, the commit marker), exactly one wins.
- Endpoint: `endpoint_url` argument, else JOB_S3_ENDPOINT_URL (set by
  `--s3-endpoint-url`), else botocore's own AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL.
- Credentials come from the standard AWS chain and are never logged, written or
  put in an error message: errors name the s3:// URI, the endpoint host and the fix.
- Retries: botocore's "standard" mode (bounded, with backoff) on throttling, 5xx
  and connection errors; a conditional write answered 409 ConditionalRequestConflict
  (another conditional PUT to the key in flight) is asked again, as bounded.
"""

from __future__ import annotations

import io
import logging
import os
import random
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any
from urllib.parse import urlsplit

from job.errors import JobError
from job.storage.base import Storage

ENDPOINT_ENV = "JOB_S3_ENDPOINT_URL"
MAX_ATTEMPTS_ENV = "JOB_S3_MAX_ATTEMPTS"
MULTIPART_THRESHOLD = 64 * 2**20
MULTIPART_CHUNK = 16 * 2**20

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_AUTH_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "AllAccessDisabled",
    "403",
}
_CONFLICT_CODES = ("ConditionalRequestConflict", "409")
_CONFLICT_BACKOFF_S = 0.1  # doubled per attempt (jittered): 5 attempts wait at most 1.5 s
_RETRIED_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestLimitExceeded",
    *_CONFLICT_CODES,
}

# botocore/urllib3 DEBUG logs carry request headers (Authorization names the access
# key id); keep them quiet even under `job --log-level DEBUG`.
for _name in ("botocore", "boto3", "s3transfer", "urllib3"):
    logging.getLogger(_name).setLevel(logging.WARNING)


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """'s3://bucket/some/prefix' -> ('bucket', 'some/prefix/') (prefix '' for the bucket root)."""
    rest = uri.removeprefix("s3://")
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET_RE.match(bucket):
        raise JobError(
            f"invalid S3 bucket name {bucket!r} in {uri!r}: expected s3://<bucket>/<prefix> with a bucket of 3-63 lowercase letters, digits, '.' or '-'"
        )
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def _safe_endpoint(url: str | None) -> str:
    """The endpoint for messages, without any user:password@ part."""
    if not url:
        return "the default AWS endpoint"
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}"


class S3Storage(Storage):
    def __init__(
        self,
        root: str,
        *,
        endpoint_url: str | None = None,
        multipart_threshold: int = MULTIPART_THRESHOLD,
        multipart_chunk: int = MULTIPART_CHUNK,
        max_attempts: int | None = None,
    ):
        import boto3
        from botocore.config import Config

        self.root = root.rstrip("/")
        self.bucket, self.prefix = parse_s3_uri(root)
        self.endpoint_url = endpoint_url or os.environ.get(ENDPOINT_ENV) or None
        raw = os.environ.get(MAX_ATTEMPTS_ENV) or "5"
        if max_attempts is None and not raw.isdigit():
            raise JobError(f"{MAX_ATTEMPTS_ENV}={raw!r} is not a positive integer (S3 attempts per request)")
        attempts = max_attempts or max(int(raw), 1)
        self.max_attempts = attempts
        config = Config(
            # total_max_attempts counts the first try; botocore's "max_attempts" would not
            retries={"mode": "standard", "total_max_attempts": attempts},
            connect_timeout=10,
            read_timeout=120,
            max_pool_connections=32,  # reduce reads shards concurrently
        )
        # a private session: thread-safe client, nothing shared with other code
        self.client: Any = boto3.session.Session().client("s3", endpoint_url=self.endpoint_url, config=config)
        self.multipart_threshold = multipart_threshold
        self.multipart_chunk = multipart_chunk

    # --- helpers -----------------------------------------------------------------

    def _k(self, key: str) -> str:
        return self.prefix + key

    def _where(self) -> str:
        return _safe_endpoint(self.endpoint_url or self.client.meta.endpoint_url)

    @contextmanager
    def _errors(self, key: str | None, action: str) -> Iterator[None]:
        """Map botocore errors to one-line JobErrors naming the URI and the fix."""
        from botocore import exceptions as bx

        uri = self.uri(key) if key is not None else self.root
        try:
            yield
        except bx.NoCredentialsError:
            raise JobError(
                f"cannot {action} {uri}: no AWS credentials found; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or a role"
            ) from None
        except (bx.EndpointConnectionError, bx.ConnectionClosedError, bx.ConnectTimeoutError) as e:
            raise JobError(
                f"cannot {action} {uri}: S3 endpoint {self._where()} unreachable ({type(e).__name__}, retries exhausted); check --s3-endpoint-url / AWS_ENDPOINT_URL and the network"
            ) from None
        except bx.ReadTimeoutError:
            raise JobError(
                f"cannot {action} {uri}: S3 endpoint {self._where()} timed out (retries exhausted); try again later"
            ) from None
        except bx.ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code == "NoSuchBucket":
                raise JobError(
                    f"cannot {action} {uri}: bucket {self.bucket!r} does not exist at {self._where()}; create it or fix --output"
                ) from None
            if code in _AUTH_CODES:
                raise JobError(
                    f"cannot {action} {uri}: access denied ({code}); check the AWS credentials (AWS_ACCESS_KEY_ID/AWS_PROFILE) and the bucket policy"
                ) from None
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            # 5xx and throttling were already retried: say so, and name the endpoint
            retried = code in _RETRIED_CODES or (isinstance(status, int) and status >= 500)
            hint = f" after {self.max_attempts} attempts; try again later or raise {MAX_ATTEMPTS_ENV}"
            raise JobError(
                f"cannot {action} {uri}: S3 error {code or status} (HTTP {status}) from {self._where()}"
                + (hint if retried else "")
            ) from None
        except bx.BotoCoreError as e:
            # e.g. a malformed endpoint URL; botocore messages carry no credentials
            raise JobError(f"cannot {action} {uri}: {type(e).__name__}: {e}") from None

    # --- Storage -----------------------------------------------------------------

    def read_bytes(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        with self._errors(key, "read"):
            try:
                resp = self.client.get_object(Bucket=self.bucket, Key=self._k(key))
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    raise JobError(f"{self.uri(key)}: not found") from None
                raise
            data: bytes = resp["Body"].read()
            return data

    def write_bytes(self, key: str, data: bytes, *, if_absent: bool = False) -> bool:
        with self._errors(key, "write"):
            if if_absent:
                return self._put_if_absent(key, data)
            if len(data) < self.multipart_threshold:
                self.client.put_object(Bucket=self.bucket, Key=self._k(key), Body=data)
            else:
                self._managed_upload(self._k(key), data)
        return True

    def _put_if_absent(self, key: str, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        for attempt in range(self.max_attempts):
            try:
                if len(data) < self.multipart_threshold:
                    self.client.put_object(Bucket=self.bucket, Key=self._k(key), Body=data, IfNoneMatch="*")
                else:
                    self._multipart_if_absent(self._k(key), data)
                return True
            except ClientError as e:
                code = e.response.get("Error", {}).get("Code")
                if code in ("PreconditionFailed", "412"):
                    # botocore retries a PUT whose reply was lost: the 412 may answer our
                    # own earlier attempt, which landed. Ours only if the bytes are ours.
                    return self._holds(key, data)
                # 409: another conditional PUT to this key is in flight; its outcome is
                # unknown yet (nothing to read), so ask again once it has settled
                if code not in _CONFLICT_CODES or attempt + 1 == self.max_attempts:
                    raise
            time.sleep(_CONFLICT_BACKOFF_S * 2**attempt * random.uniform(0.5, 1.0))
        raise AssertionError("unreachable")

    def _holds(self, key: str, data: bytes) -> bool:
        # a read error propagates: better a failed run than a wrong guess about the commit
        return self.read_bytes(key) == data

    def _managed_upload(self, s3_key: str, data: bytes) -> None:
        from boto3.s3.transfer import TransferConfig

        cfg = TransferConfig(
            multipart_threshold=self.multipart_threshold,
            multipart_chunksize=self.multipart_chunk,
            max_concurrency=4,
        )
        self.client.upload_fileobj(io.BytesIO(data), self.bucket, s3_key, Config=cfg)

    def _multipart_if_absent(self, s3_key: str, data: bytes) -> None:
        # the managed transfer cannot pass If-None-Match; S3 accepts it on Complete
        up = self.client.create_multipart_upload(Bucket=self.bucket, Key=s3_key)
        uid = up["UploadId"]
        try:
            parts = []
            for n, off in enumerate(range(0, len(data), self.multipart_chunk), start=1):
                r = self.client.upload_part(
                    Bucket=self.bucket,
                    Key=s3_key,
                    UploadId=uid,
                    PartNumber=n,
                    Body=data[off : off + self.multipart_chunk],
                )
                parts.append({"PartNumber": n, "ETag": r["ETag"]})
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=s3_key,
                UploadId=uid,
                MultipartUpload={"Parts": parts},
                IfNoneMatch="*",
            )
        except BaseException:
            # the original error is the one to report
            with suppress(Exception):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=s3_key, UploadId=uid)
            raise

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        with self._errors(key, "check"):
            try:
                self.client.head_object(Bucket=self.bucket, Key=self._k(key))
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return False
                raise
        return True

    def list(self, prefix: str) -> list[str]:
        keys = []
        with self._errors(prefix, "list"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._k(prefix)
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    rel = obj["Key"][len(self.prefix) :]
                    # like LocalStorage: dot-files are temporaries, never records
                    if not rel.rsplit("/", 1)[-1].startswith("."):
                        keys.append(rel)
        return sorted(keys)

    def delete(self, key: str) -> None:
        with self._errors(key, "delete"):
            self.client.delete_object(Bucket=self.bucket, Key=self._k(key))

    def check_writable(self) -> None:
        """A real PUT + DELETE: proves bucket, credentials and write permission."""
        key = f".write-check-{uuid.uuid4().hex}"
        with self._errors(None, "write to"):
            self.client.put_object(Bucket=self.bucket, Key=self._k(key), Body=b"")
            self.client.delete_object(Bucket=self.bucket, Key=self._k(key))

    # --- compare-and-swap on the ETag (If-Match; If-None-Match: * for an absent key)

    def read_versioned(self, key: str) -> tuple[bytes | None, str | None]:
        from botocore.exceptions import ClientError

        with self._errors(key, "read"):
            try:
                resp = self.client.get_object(Bucket=self.bucket, Key=self._k(key))
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None, None
                raise
            data: bytes = resp["Body"].read()
            return data, str(resp["ETag"])

    def write_if_version(self, key: str, data: bytes, version: str | None) -> bool:
        from botocore.exceptions import ClientError

        cond = {"IfMatch": version} if version else {"IfNoneMatch": "*"}
        with self._errors(key, "write"):
            try:
                self.client.put_object(Bucket=self.bucket, Key=self._k(key), Body=data, **cond)
            except ClientError as e:
                # 412: changed since read; 404: deleted since; 409: another conditional PUT in
                # flight. The caller reads again and merges (a lost reply whose PUT landed
                # merges into itself: the same content)
                if e.response.get("Error", {}).get("Code") in (
                    "PreconditionFailed", "412", "NoSuchKey", "404", *_CONFLICT_CODES
                ):  # fmt: skip
                    return False
                raise
        return True
