"""A real S3-compatible server for the sync tests: moto's standalone server, started once on
127.0.0.1 (a free port) in this process, and a fresh bucket per test.

Credentials reach the sync through the environment (the usual AWS chain); shared config files and
the instance metadata service are switched off so nothing on the machine leaks in.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from litestar.testing import TestClient
from moto.server import ThreadedMotoServer

REGION = "us-east-1"
PREFIX = "kroma-test"
SLUG = "demo"
BASE = f"/api/projects/{SLUG}"


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Test credentials in the environment; nothing else of the machine's AWS setup."""
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def s3_client(moto_url: str, key: str = "testing", secret: str = "testing") -> Any:
    return boto3.client(
        "s3",
        endpoint_url=moto_url,
        region_name=REGION,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
    )


@pytest.fixture
def bucket(moto_url: str, aws_env: None) -> str:
    name = f"kroma-{uuid.uuid4().hex[:12]}"
    s3_client(moto_url).create_bucket(Bucket=name)
    return name


@pytest.fixture
def project_root(tmp_path: Path) -> Path:
    return tmp_path / "app" / "var" / "projects" / SLUG


@pytest.fixture
def s3_project(client: TestClient, moto_url: str, bucket: str, project_root: Path) -> dict[str, Any]:
    """The project `demo` with S3 on (the moto endpoint, the test's bucket) and its folder."""
    project = client.post("/api/projects", json={"name": "Demo", "slug": SLUG}).json()["project"]
    body = {"enabled": True, "bucket": bucket, "prefix": PREFIX, "region": REGION, "endpoint_url": moto_url}
    response = client.put(f"{BASE}/storage/s3", json=body)
    assert response.status_code == 200, response.text
    project_root.mkdir(parents=True, exist_ok=True)
    return {**project, "bucket": bucket}


def objects(moto_url: str, bucket: str) -> dict[str, bytes]:
    """Every object in the bucket: key -> bytes."""
    client = s3_client(moto_url)
    found = {}
    for item in client.list_objects_v2(Bucket=bucket).get("Contents", []):
        found[item["Key"]] = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return found


@pytest.fixture
def moto_auth(moto_url: str) -> Iterator[Callable[[], tuple[str, str]]]:
    """Turn moto's IAM checks on (a user allowed s3:*); yields a function giving its key pair.
    Checks go off again afterwards: the server is shared by every test."""

    def enable() -> tuple[str, str]:
        iam = boto3.client(
            "iam", endpoint_url=moto_url, region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x"
        )
        user = f"kroma-{uuid.uuid4().hex[:8]}"
        iam.create_user(UserName=user)
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        httpx.post(f"{moto_url}/moto-api/reset-auth", content=b"0").raise_for_status()
        return key["AccessKeyId"], key["SecretAccessKey"]

    try:
        yield enable
    finally:
        httpx.post(f"{moto_url}/moto-api/reset-auth", content=b"inf").raise_for_status()
