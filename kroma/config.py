"""Settings: built-in defaults < config/kroma.toml < KROMA_* environment < CLI flags."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import msgspec

TRUE_WORDS = {"1", "true", "yes", "on"}


@lru_cache(maxsize=64)  # asked on many requests; resolving walks the path with a syscall per part
def _resolved(path: str) -> Path:
    return Path(path).resolve()


class Settings(msgspec.Struct, kw_only=True):
    data_dir: str = "var/kroma"
    bind: str = "127.0.0.1:8788"
    workspace_root: str = ""
    allowed_roots: str = ""  # os.pathsep-separated folders the server may write into; "" = app root
    upload_max_bytes: int = 50 * 1024 * 1024
    event_store_url: str = ""  # "" = the SQLite file events.db in data_dir; postgresql://... = PostgreSQL
    event_store_schema: str = "kroma"  # the PostgreSQL schema holding the log's tables
    # With the log on PostgreSQL, the read models and the secrets' data keys live there too, each in
    # a schema of its own ("" = <event_store_schema>_rm / <event_store_schema>_keys).
    readmodels_schema: str = ""
    keys_schema: str = ""
    readmodels_pool_size: int = 10  # read connections per process to the PostgreSQL read models
    request_max_bytes: int = 10 * 1024 * 1024  # any other request body (JSON); larger is a 413
    sse_streams_per_token: int = 8  # live event streams open at once per token; more is a 429
    run_engine: bool = True  # execute runs inside this process (kroma serve)
    run_provider_calls: int = 4  # provider calls in flight, across all runs
    run_cpu_workers: int = 0  # image work (render, QA) in worker threads; 0 = one per CPU
    run_jobs_in_flight: int = 4  # jobs of one run worked at once
    run_runs_in_flight: int = 4  # runs worked at once; later runs wait (queued) for a slot
    run_lease_seconds: float = 30.0  # a job claim's lease; renewed every third of it while worked
    run_worker_id: str = ""  # the engine's name in job claims; "" = <hostname>:<pid>
    agent_dispatch: bool = True  # deliver confirmed agent instructions inside this process (kroma serve)
    agent_api_url: str = ""  # else the project's secret agent_api/url
    agent_api_token: str = ""  # else the project's secret agent_api/token
    agent_worker_id: str = ""  # "" = worker-<hex>
    agent_poll_interval_seconds: float = 2.0
    agent_max_locked_seconds: float = 120.0  # the lease
    agent_default_max_attempts: int = 3
    agent_retry_backoff_seconds: float = 10.0
    agent_dispatch_timeout_seconds: float = 20.0
    agent_dispatch_retries: int = 2
    agent_dispatch_backoff_seconds: float = 1.5
    auth_dev_bypass: bool = False
    auth_bootstrap_first_token: bool = True
    log_level: str = "info"
    s3_concurrency: int = 4  # PUTs (whole objects or parts) in flight per S3 sync
    s3_multipart_threshold: int = 16 * 1024 * 1024  # larger files go up in parts
    s3_multipart_chunk: int = 8 * 1024 * 1024  # part size (S3 wants >= 5 MiB but for the last)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).resolve()

    @property
    def events_db(self) -> str:
        return str(self.data_path / "events.db")

    @property
    def on_postgres(self) -> bool:
        """Whether the log (and with it the read models and data keys) is on a PostgreSQL server."""
        return self.event_store_url.strip().startswith(("postgresql://", "postgres://"))

    @property
    def readmodels_pg_schema(self) -> str:
        return self.readmodels_schema or f"{self.event_store_schema}_rm"

    @property
    def keys_pg_schema(self) -> str:
        return self.keys_schema or f"{self.event_store_schema}_keys"

    @property
    def readmodels_db(self) -> str:
        return str(self.data_path / "readmodels.db")

    @property
    def app_root(self) -> Path:
        """The reference's app root: relative storage and pipeline paths resolve against it. By
        default the folder the server runs in, so `var/projects/<slug>` sits beside `var/kroma`."""
        return _resolved(os.path.join(os.getcwd(), self.workspace_root))

    @property
    def workspace(self) -> str:
        return str(self.app_root)

    @property
    def write_roots(self) -> tuple[Path, ...]:
        """Where uploads and runs may write: the configured roots, else the app root alone."""
        roots = [r.strip() for r in self.allowed_roots.split(os.pathsep) if r.strip()]
        return tuple(Path(r).resolve() for r in roots) or (self.app_root,)

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.bind.rpartition(":")
        return host.strip("[]") or "127.0.0.1", int(port)

    def ensure_data_dir(self) -> Path:
        self.data_path.mkdir(parents=True, exist_ok=True)
        return self.data_path


# (settings field, env names in order of preference, TOML section, TOML key)
_SOURCES: tuple[tuple[str, tuple[str, ...], str, str], ...] = (
    ("data_dir", ("KROMA_DATA_DIR",), "storage", "data_dir"),
    ("workspace_root", ("KROMA_WORKSPACE_ROOT",), "storage", "workspace_root"),
    ("allowed_roots", ("KROMA_ALLOWED_ROOTS",), "storage", "allowed_roots"),
    ("upload_max_bytes", ("KROMA_UPLOAD_MAX_BYTES",), "storage", "upload_max_bytes"),
    ("event_store_url", ("KROMA_EVENT_STORE_URL",), "storage", "event_store_url"),
    ("event_store_schema", ("KROMA_EVENT_STORE_SCHEMA",), "storage", "event_store_schema"),
    ("readmodels_schema", ("KROMA_READMODELS_SCHEMA",), "storage", "readmodels_schema"),
    ("keys_schema", ("KROMA_KEYS_SCHEMA",), "storage", "keys_schema"),
    ("readmodels_pool_size", ("KROMA_READMODELS_POOL_SIZE",), "storage", "readmodels_pool_size"),
    ("run_engine", ("KROMA_RUN_ENGINE",), "runs", "engine"),
    ("run_provider_calls", ("KROMA_RUN_PROVIDER_CALLS",), "runs", "provider_calls"),
    ("run_cpu_workers", ("KROMA_RUN_CPU_WORKERS",), "runs", "cpu_workers"),
    ("run_jobs_in_flight", ("KROMA_RUN_JOBS_IN_FLIGHT",), "runs", "jobs_in_flight"),
    ("run_runs_in_flight", ("KROMA_RUN_RUNS_IN_FLIGHT",), "runs", "runs_in_flight"),
    ("run_lease_seconds", ("KROMA_RUN_LEASE_SECONDS",), "runs", "lease_seconds"),
    ("run_worker_id", ("KROMA_RUN_WORKER_ID",), "runs", "worker_id"),
    ("agent_dispatch", ("KROMA_AGENT_DISPATCH",), "agent", "dispatch"),
    ("agent_api_url", ("KROMA_AGENT_API_URL", "IAT_AGENT_API_URL"), "agent", "api_url"),
    ("agent_api_token", ("KROMA_AGENT_API_TOKEN", "IAT_AGENT_API_TOKEN"), "agent", "api_token"),
    ("agent_worker_id", ("KROMA_AGENT_WORKER_ID",), "agent", "worker_id"),
    ("agent_poll_interval_seconds", ("KROMA_AGENT_POLL_INTERVAL_SECONDS",), "agent", "poll_interval_seconds"),
    ("agent_max_locked_seconds", ("KROMA_AGENT_MAX_LOCKED_SECONDS",), "agent", "max_locked_seconds"),
    ("agent_default_max_attempts", ("KROMA_AGENT_DEFAULT_MAX_ATTEMPTS",), "agent", "default_max_attempts"),
    ("agent_retry_backoff_seconds", ("KROMA_AGENT_RETRY_BACKOFF_SECONDS",), "agent", "retry_backoff_seconds"),
    ("agent_dispatch_timeout_seconds", ("KROMA_AGENT_DISPATCH_TIMEOUT",), "agent", "dispatch_timeout"),
    ("agent_dispatch_retries", ("KROMA_AGENT_DISPATCH_RETRIES",), "agent", "dispatch_retries"),
    (
        "agent_dispatch_backoff_seconds",
        ("KROMA_AGENT_DISPATCH_BACKOFF_SECONDS",),
        "agent",
        "dispatch_backoff_seconds",
    ),
    ("bind", ("KROMA_BIND", "KROMA_BACKEND_BIND"), "server", "bind"),
    ("request_max_bytes", ("KROMA_REQUEST_MAX_BYTES",), "server", "request_max_bytes"),
    ("sse_streams_per_token", ("KROMA_SSE_STREAMS_PER_TOKEN",), "server", "sse_streams_per_token"),
    ("auth_dev_bypass", ("KROMA_API_AUTH_DEV_BYPASS",), "auth", "dev_bypass"),
    (
        "auth_bootstrap_first_token",
        ("KROMA_API_AUTH_BOOTSTRAP_FIRST_TOKEN",),
        "auth",
        "bootstrap_first_token",
    ),
    ("log_level", ("KROMA_LOG_LEVEL",), "log", "level"),
    ("s3_concurrency", ("KROMA_S3_CONCURRENCY",), "s3", "concurrency"),
    ("s3_multipart_threshold", ("KROMA_S3_MULTIPART_THRESHOLD",), "s3", "multipart_threshold"),
    ("s3_multipart_chunk", ("KROMA_S3_MULTIPART_CHUNK",), "s3", "multipart_chunk"),
)


def _default_config_file() -> Path | None:
    for candidate in (
        Path.cwd() / "config" / "kroma.toml",
        Path(__file__).parent.parent / "config" / "kroma.toml",
    ):
        if candidate.is_file():
            return candidate
    return None


def load_settings(
    environ: Mapping[str, str] | None = None, config_file: str | None = None, **overrides: Any
) -> Settings:
    """Resolve settings from every layer. `overrides` are CLI flags (None means not given)."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    path = Path(config_file) if config_file else None
    if path is None and env.get("KROMA_CONFIG"):
        path = Path(env["KROMA_CONFIG"])
    if path is None:
        path = _default_config_file()
    document = tomllib.loads(path.read_text()) if path is not None else {}
    for name, env_names, section, key in _SOURCES:
        if key in document.get(section, {}):
            values[name] = document[section][key]
        for env_name in env_names:
            if env.get(env_name, "").strip():
                raw = env[env_name].strip()
                is_flag = isinstance(getattr(Settings(), name), bool)
                values[name] = raw.lower() in TRUE_WORDS if is_flag else raw
                break
    values.update({k: v for k, v in overrides.items() if v is not None})
    return msgspec.convert(values, Settings, strict=False)  # env values are text: "8" -> 8
