"""An S3 bucket through aioboto3 (any S3-compatible endpoint): check access, upload one file
(one PUT, or a multipart upload that resumes an interrupted one), and S3 failures as the contract's
errors.

Credentials come from the usual AWS chain (environment, the project's profile, shared files,
instance roles); the project's settings give the region, profile and `endpoint_url`. Every body is
sent with its Content-MD5, so the server refuses bytes that changed on the way.

Errors (`s3_error`): refused credentials 400 `s3_access_denied`, a missing bucket 400
`s3_bucket_not_found`, no credentials 400 `s3_credentials_missing`, an unknown profile 400
`s3_profile_not_found`, any other refusal 400 `s3_request_failed`; an endpoint that cannot be
reached 502 `s3_unreachable`, a server error 502 `s3_server_error`. All of kind `provider`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import anyio
from botocore import exceptions as boto
from botocore.config import Config

from kroma.domain.errors import KromaError
from kroma.domain.storage_sync import S3Target

ACCESS_DENIED_CODES = frozenset(
    {
        "403",
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "InvalidClientTokenId",
        "AllAccessDisabled",
        "AuthorizationHeaderMalformed",
    }
)
MISSING_BUCKET_CODES = frozenset({"404", "NoSuchBucket"})

PartDone = Callable[[int], None]  # bytes of one part (or a whole single-PUT file) now stored


class S3Failure(KromaError):
    kind = "provider"


def _failure(message: str, code: str, status: int = 400) -> S3Failure:
    return S3Failure(message, status=status, code=code)


def s3_error(exc: BaseException, target: S3Target) -> KromaError:
    """What a client is told about an S3 failure (never a credential)."""
    where = target.endpoint_url or "the AWS default endpoint"
    if isinstance(exc, KromaError):
        return exc
    if isinstance(exc, boto.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or "")
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        detail = str(error.get("Message") or "").strip()
        suffix = f": {detail}" if detail else ""
        if code in ACCESS_DENIED_CODES or status == 403:
            return _failure(
                f"S3 refused the credentials for bucket '{target.bucket}' ({code or status}){suffix}",
                "s3_access_denied",
            )
        if code in MISSING_BUCKET_CODES:
            return _failure(f"S3 bucket '{target.bucket}' does not exist at {where}", "s3_bucket_not_found")
        if status >= 500:
            return _failure(f"S3 server error at {where} ({code or status}){suffix}", "s3_server_error", 502)
        return _failure(f"S3 refused the request ({code or status}){suffix}", "s3_request_failed")
    if isinstance(exc, boto.NoCredentialsError | boto.PartialCredentialsError):
        return _failure(
            "No AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE),"
            " or the project's S3 profile",
            "s3_credentials_missing",
        )
    if isinstance(exc, boto.ProfileNotFound):
        return _failure(f"AWS profile '{target.profile}' was not found", "s3_profile_not_found")
    if isinstance(exc, boto.ParamValidationError):
        return _failure(f"S3 refused the request: {exc}", "s3_request_failed")
    if isinstance(exc, ValueError) and "endpoint" in str(exc).lower():
        return _failure(f"S3 endpoint_url is not valid: {target.endpoint_url}", "s3_invalid_endpoint")
    if isinstance(exc, boto.EndpointConnectionError | boto.ConnectTimeoutError | boto.ConnectionClosedError):
        return _failure(f"S3 endpoint unreachable: {where}", "s3_unreachable", 502)
    if isinstance(exc, boto.BotoCoreError | OSError):
        return _failure(f"S3 endpoint failed: {where}: {type(exc).__name__}", "s3_unreachable", 502)
    return _failure(f"S3 upload failed: {type(exc).__name__}", "s3_error", 502)


@dataclass(frozen=True)
class Uploaded:
    etag: str
    size: int
    sha256: str  # of the bytes sent
    multipart: bool
    parts: int
    reused_parts: int


def _md5(data: bytes) -> tuple[str, str]:
    digest = hashlib.md5(data, usedforsecurity=False).digest()
    return digest.hex(), base64.b64encode(digest).decode()


def _etag(value: Any) -> str:
    return str(value or "").strip('"')


class Bucket:
    """One bucket of one endpoint, open for a sync. `requests` bounds the PUTs in flight (a single
    object or one part each) across every upload sharing it."""

    def __init__(self, client: Any, target: S3Target, requests: anyio.Semaphore) -> None:
        self.client = client
        self.target = target
        self.requests = requests

    async def check(self) -> None:
        """HeadBucket: the endpoint answers, the credentials are accepted, the bucket exists."""
        await self.client.head_bucket(Bucket=self.target.bucket)

    async def upload(
        self, path: Path, key: str, *, threshold: int, chunk: int, part_done: PartDone | None = None
    ) -> Uploaded:
        """Store the file's current bytes at `key`; the answer describes exactly what was sent."""
        size = (await anyio.Path(path).stat()).st_size
        if size <= threshold:
            return await self._put(path, key, part_done)
        return await self._multipart(path, key, max(1, chunk), part_done)

    async def _put(self, path: Path, key: str, part_done: PartDone | None) -> Uploaded:
        async with self.requests:
            data = await anyio.Path(path).read_bytes()
            _hex, md5 = _md5(data)
            answer = await self.client.put_object(Bucket=self.target.bucket, Key=key, Body=data, ContentMD5=md5)
        if part_done is not None:
            part_done(len(data))
        return Uploaded(_etag(answer.get("ETag")), len(data), hashlib.sha256(data).hexdigest(), False, 1, 0)

    async def _stored_parts(self, key: str) -> tuple[str | None, dict[int, tuple[str, int]]]:
        """An unfinished multipart upload of `key` (the newest) and its stored parts
        {number: (etag, size)}; (None, {}) when there is none or the server cannot list them."""
        bucket = self.target.bucket
        try:
            listed = await self.client.list_multipart_uploads(Bucket=bucket, Prefix=key)
            uploads = [u for u in listed.get("Uploads", []) if u.get("Key") == key]
            if not uploads:
                return None, {}
            upload_id = str(max(uploads, key=lambda u: u.get("Initiated") or "")["UploadId"])
            parts: dict[int, tuple[str, int]] = {}
            paginator = self.client.get_paginator("list_parts")
            async for page in paginator.paginate(Bucket=bucket, Key=key, UploadId=upload_id):
                for part in page.get("Parts", []):
                    parts[int(part["PartNumber"])] = (_etag(part.get("ETag")), int(part.get("Size") or 0))
            return upload_id, parts
        except boto.ClientError:
            return None, {}

    async def _multipart(self, path: Path, key: str, chunk: int, part_done: PartDone | None) -> Uploaded:
        bucket = self.target.bucket
        upload_id, stored = await self._stored_parts(key)
        if upload_id is None:
            created = await self.client.create_multipart_upload(Bucket=bucket, Key=key)
            upload_id = str(created["UploadId"])
        sha = hashlib.sha256()
        etags: dict[int, str] = {}
        size = reused = 0

        async def send(number: int, data: bytes, md5: str) -> None:
            try:
                answer = await self.client.upload_part(
                    Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data, ContentMD5=md5
                )
                etags[number] = _etag(answer.get("ETag"))
            finally:
                self.requests.release()
            if part_done is not None:
                part_done(len(data))

        with await anyio.to_thread.run_sync(path.open, "rb") as handle:  # read in worker threads
            async with anyio.create_task_group() as tg:
                number = 0
                while True:
                    await self.requests.acquire()  # at most `requests` parts read and in flight
                    data = await anyio.to_thread.run_sync(_read, handle, chunk)
                    if not data:
                        self.requests.release()
                        break
                    number += 1
                    sha.update(data)
                    size += len(data)
                    hex_md5, md5 = _md5(data)
                    if stored.get(number) == (hex_md5, len(data)):  # already stored: this exact part
                        self.requests.release()
                        etags[number] = hex_md5
                        reused += 1
                        if part_done is not None:
                            part_done(len(data))
                        continue
                    tg.start_soon(send, number, data, md5)
        parts = [{"PartNumber": n, "ETag": f'"{etags[n]}"'} for n in sorted(etags)]
        done = await self.client.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
        )
        return Uploaded(_etag(done.get("ETag")), size, sha.hexdigest(), True, len(parts), reused)


def _read(handle: BinaryIO, size: int) -> bytes:
    return handle.read(size)


def _config(target: S3Target) -> Config:
    return Config(
        region_name=target.region or None,
        retries={"mode": "standard"},  # 3 attempts; AWS_MAX_ATTEMPTS (the usual chain) overrides
        connect_timeout=5,
        read_timeout=60,
        # Only the checksums S3 requires: S3-compatible servers refuse the newer default ones.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"addressing_style": "path" if target.endpoint_url else "auto"},
    )


@contextlib.asynccontextmanager
async def open_bucket(target: S3Target, requests: anyio.Semaphore) -> AsyncIterator[Bucket]:
    """A client for the target's endpoint; failures to set it up are `s3_error`s."""
    import aioboto3  # imported here: it takes a while, and only syncs need it

    try:
        session = aioboto3.Session(profile_name=target.profile or None, region_name=target.region or None)
        context = session.client("s3", endpoint_url=target.endpoint_url or None, config=_config(target))
    except Exception as exc:
        raise s3_error(exc, target) from None
    async with context as client:
        yield Bucket(client, target, requests)
