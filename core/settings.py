"""The one configuration object of binaudit.

Built once in the CLI entry point (``Settings()``) and passed down; nothing below the entry
point reads ``os.environ``. Environment variables use the prefix ``BINAUDIT_`` and ``__`` for
nesting, e.g. ``BINAUDIT_KAFKA__BOOTSTRAP_SERVERS=127.0.0.1:19092``. A ``.env`` file in the
working directory is read too.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_FROZEN = ConfigDict(frozen=True, extra="forbid")

BackendName = Literal["auto", "eager", "compiled", "onnxruntime", "openvino",
                      "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt"]


class KafkaSettings(BaseModel):
    model_config = _FROZEN

    bootstrap_servers: str = "127.0.0.1:19092"
    topic: str = "bin-events"
    group_id: str = "binaudit-worker"
    dlq_topic: str | None = None
    client_id: str = "binaudit"
    max_poll_interval_ms: int = 300_000
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 3_000
    max_message_bytes: int = 1_048_576
    # Security pass-through (documented in the README); PLAINTEXT on loopback.
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None

    def client_kwargs(self) -> dict[str, object]:
        """Keyword arguments shared by kafka-python's producer, consumer and admin client."""
        kwargs: dict[str, object] = {
            "bootstrap_servers": self.bootstrap_servers.split(","),
            "security_protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_username
            if self.sasl_password is not None:
                kwargs["sasl_plain_password"] = self.sasl_password.get_secret_value()
        for key, value in (
            ("ssl_cafile", self.ssl_cafile),
            ("ssl_certfile", self.ssl_certfile),
            ("ssl_keyfile", self.ssl_keyfile),
        ):
            if value is not None:
                kwargs[key] = str(value)
        return kwargs

    def consumer_kwargs(self, **overrides: object) -> dict[str, object]:
        """KafkaConsumer options shared by the worker and replay: offsets are committed by
        hand (or never), reading starts at the earliest record, and a fetch always fits the
        largest message we accept."""
        return {
            **self.client_kwargs(),
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "max_partition_fetch_bytes": max(self.max_message_bytes * 2, 1_048_576),
            **overrides,
        }


class S3Settings(BaseModel):
    """The image store. Unset keys, endpoint and region mean what they mean to every AWS tool:
    botocore's credential chain (environment, profile, web identity/IRSA, container or
    instance role) and its region resolution (AWS_REGION, the profile). The local stack
    (``binaudit services``) sets its own endpoint and keys explicitly."""

    model_config = _FROZEN

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    anonymous: bool = False
    # Bucket events point at; the demo seeds it in the real ABID layout.
    bucket: str = "binaudit-images"
    # Image URIs outside these buckets become dead letters (kind bucket_not_allowed).
    allowed_buckets: tuple[str, ...] = ("binaudit-images",)
    max_concurrency: int = 32
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    max_attempts: int = 5
    # Per-event budget for S3 errors nobody classified (a 500 that persists for one key while
    # other keys of the bucket are served): after this many rounds (each with botocore's own
    # retries) the event is a fetch_failed dead letter, so one poison object cannot stall its
    # partition. Credential, bucket and connection errors are not the event's fault: they are
    # retried until fixed, and so is any error the rest of the bucket shares (an outage).
    fetch_attempts: int = Field(4, ge=1)
    # Per-event budget for a refusal of one object (AccessDenied/403 or a KMS error for this
    # key while other keys of the bucket are served: a bucket policy or KMS key covering the
    # object, or a missing key read without s3:ListBucket): then an access_denied dead letter.
    # Refused everywhere (IAM policy revoked, credentials expired) is an outage instead.
    object_denied_attempts: int = Field(3, ge=1)
    # This many distinct keys of one bucket failing with 5xx/unclassified errors within
    # bucket_window_s is an outage (paused, retried, alerted; no dead letters), even while
    # other keys are still served.
    outage_min_keys: int = Field(3, ge=2)
    bucket_window_s: float = Field(30.0, gt=0)
    # Either budget ends no sooner than this after the key's first failure judged its own:
    # the other keys of a burst or a revocation fail within it and make it an outage.
    object_failure_min_s: float = Field(5.0, ge=0)


class AbidSourceSettings(BaseModel):
    """Where the public Amazon Bin Image Dataset lives (used by ``binaudit data fetch``)."""

    model_config = _FROZEN

    bucket: str = "aft-vbi-pds"
    endpoint_url: str | None = None
    region: str = "us-east-1"
    anonymous: bool = True
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    concurrency: int = 16
    max_attempts: int = 6


class DatabaseSettings(BaseModel):
    model_config = _FROZEN

    # A URL may carry a password, so it is a secret: never logged.
    url: SecretStr = SecretStr("postgresql+psycopg2://postgres@127.0.0.1:15432/binaudit")
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] | None = (
        None
    )
    sslrootcert: Path | None = None
    pool_size: int = 5

    def connect_args(self) -> dict[str, str]:
        """libpq options that travel next to the URL (TLS)."""
        args: dict[str, str] = {}
        if self.sslmode:
            args["sslmode"] = self.sslmode
        if self.sslrootcert:
            args["sslrootcert"] = str(self.sslrootcert)
        return args


class InferenceSettings(BaseModel):
    """The model and how it runs: shared by the worker, serve, replay and the trainer's
    evaluation (no front end reads another front end's section for these)."""

    model_config = _FROZEN

    # The counter used when the registry names none for this deployment: a local artifact
    # directory or an s3://bucket/prefix/ URI (downloaded, checksum-verified and cached in
    # artifact_cache_dir). The default is the counter shipped in the repository
    # (trainer/RESULTS.md); `train quickstart` and `train counter` write elsewhere.
    model: str = "models/counter"
    # The named deployment whose registry stages (production, shadow) this process follows
    # (`binaudit model promote`); None: one deployment per topic, named after it.
    deployment: str | None = None
    # Follow the registry: load the deployment's production version (and run its shadow) and
    # switch without restart when a promotion is announced (LISTEN/NOTIFY, polled every
    # registry_poll_s as a fallback). False pins ``model`` (replay, tests, one-off runs).
    follow_registry: bool = True
    registry_poll_s: float = Field(30.0, gt=0)
    # Run the deployment's shadow model on the production batches (never written to
    # audit_results/discrepancies); its queue holds at most this many batches, and a batch
    # that finds it full is skipped (counted), so production never waits for the shadow.
    run_shadow: bool = True
    shadow_queue_batches: int = Field(8, ge=1)
    artifact_cache_dir: Path = Path.home() / ".cache" / "binaudit" / "artifacts"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Inference backend (inference/backends/): "auto" measures the device's candidates at
    # start-up (cached per artifact and device) and keeps the fastest; a name pins one.
    backend: BackendName = "auto"
    # None: the autotuned batch size (16 where nothing is tuned); a number pins it.
    max_batch_size: int | None = Field(None, ge=1, le=1024)
    # None: one forward pass of the chosen batch (50 ms where nothing is tuned).
    max_wait_ms: int | None = Field(None, ge=1)
    # What autotuning tries; empty = the device's defaults (inference/backends/registry.py).
    tune_backends: tuple[BackendName, ...] = ()
    tune_batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    # Inference streams: threads that each run whole batches side by side, with the CPU's
    # threads split between them (a backend that allows concurrent calls; always 1 on CUDA).
    # None: autotuning tries ``tune_streams``; a number pins it.
    streams: int | None = Field(None, ge=1, le=64)
    tune_streams: tuple[int, ...] = (1, 2)
    # Timed seconds per (backend, batch size, streams) candidate, after one warm-up forward.
    tune_seconds: float = Field(1.0, gt=0)
    # Tuning results, exported/compiled forms missing from the artifact, compile caches.
    inference_cache_dir: Path = Path.home() / ".cache" / "binaudit" / "inference"
    decode_workers: int = Field(2, ge=1)
    # Backoff between retries of what is not the event's fault in the pipeline: a failing
    # model, an S3 outage (the worker's own section has its Postgres/commit backoff).
    retry_backoff_initial_s: float = Field(0.5, gt=0)
    retry_backoff_max_s: float = Field(10.0, gt=0)
    # Overrides of the model card's decision thresholds (None: the card's, chosen by the
    # trainer on validation for its target false-alarm rate). match when P(manifest count)
    # >= match_min_p; mismatch when 1 - P(manifest count) >= mismatch_min_score.
    match_min_p: float | None = Field(None, ge=0.0, le=1.0)
    mismatch_min_score: float | None = Field(None, ge=0.0, le=1.0)
    max_image_bytes: int = 8 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    # Test/bench hook: a per-batch sleep that simulates a slow model (seconds).
    artificial_delay_s: float = 0.0
    # Test hook: while this file exists every forward pass raises (a model failing for a
    # while, like CUDA out of memory); the reliability suite creates and removes it.
    model_fault_flag: Path | None = None
    # Test hook (never set it in production): a forward pass of more images than this raises
    # an out-of-memory error, so that batch halving can be tested on CPU.
    oom_above_batch: int | None = Field(None, ge=0)

    @property
    def model_path(self) -> Path:
        """``model`` as a local path (an s3:// model is resolved by core.model.store)."""
        return Path(self.model)

    def deployment_for(self, topic: str) -> str:
        return self.deployment or topic


class RegistrySettings(BaseModel):
    """``binaudit model promote``: the gate a candidate passes on its way to production."""

    model_config = _FROZEN

    # Production needs evidence (a backtest of candidate and production on the same events,
    # or the candidate's shadow verdicts next to production's) whose numbers are not worse
    # than production's by more than these margins (absolute), else it is refused.
    accuracy_margin: float = Field(0.01, ge=0.0, le=1.0)
    quality_margin: float = Field(0.02, ge=0.0, le=1.0)
    # Evidence must cover at least this many common events and be this recent.
    min_evidence_events: int = Field(50, ge=1)
    max_evidence_age_h: float = Field(7 * 24.0, gt=0)


# Settings that lived in the worker's section before InferenceSettings existed: the old
# variable names (BINAUDIT_WORKER__MODEL_PATH, ...) keep working for one release, with a
# warning naming the new one. Old name -> new name in the inference section.
MOVED_TO_INFERENCE = {
    "model_path": "model", "device": "device", "backend": "backend",
    "max_batch_size": "max_batch_size", "max_wait_ms": "max_wait_ms",
    "tune_backends": "tune_backends", "tune_batch_sizes": "tune_batch_sizes",
    "tune_seconds": "tune_seconds", "inference_cache_dir": "inference_cache_dir",
    "decode_workers": "decode_workers", "match_min_p": "match_min_p",
    "mismatch_min_score": "mismatch_min_score", "max_image_bytes": "max_image_bytes",
    "max_image_pixels": "max_image_pixels", "artificial_delay_s": "artificial_delay_s",
    "model_fault_flag": "model_fault_flag", "oom_above_batch": "oom_above_batch",
}


class SettingsDeprecationWarning(FutureWarning):
    """An old setting name was used (shown by default, unlike DeprecationWarning)."""


def _move_worker_settings(data: dict[str, Any]) -> dict[str, Any]:
    worker = data.get("worker")
    if not isinstance(worker, dict):
        return data
    worker = dict(worker)
    inference = dict(data.get("inference") or {})
    for old, new in MOVED_TO_INFERENCE.items():
        if old not in worker:
            continue
        value = worker.pop(old)
        warnings.warn(
            f"BINAUDIT_WORKER__{old.upper()} is deprecated and will be removed in the next "
            f"release: use BINAUDIT_INFERENCE__{new.upper()}", SettingsDeprecationWarning,
            stacklevel=2)
        inference.setdefault(new, value)  # the new name wins when both are set
    return {**data, "worker": worker, "inference": inference}


class WorkerSettings(BaseModel):
    """The Kafka consumer front end (the model and its decisions: InferenceSettings)."""

    model_config = _FROZEN

    # Bounded queues: events fetched/decoded but not yet written. Full => pause partitions.
    max_in_flight: int = Field(256, ge=1)
    poll_max_records: int = 64
    metrics_port: int | None = 9108
    shutdown_deadline_s: float = 30.0
    retry_backoff_initial_s: float = 0.5
    retry_backoff_max_s: float = 10.0
    # /healthz turns 503 when the consume loop has not turned, or (with lag) no commit has
    # succeeded, for this long.
    health_stall_s: float = Field(60.0, gt=0)
    # /readyz: while no row was written for this long, the loop checks Postgres with a
    # `SELECT 1` at this interval (the probe reads the last result; it never connects).
    health_ping_s: float = Field(10.0, gt=0)
    # Stop after this many quiet seconds once the group has no lag on any partition of the
    # topic (committed = end offsets), whoever owns it (demo and tests).
    exit_when_idle_s: float | None = None


class ServeSettings(BaseModel):
    """``binaudit serve``: the SageMaker-compatible HTTP endpoint (the model, device, image
    limits and decision thresholds come from ``inference``, so every front end agrees)."""

    model_config = _FROZEN

    # Loopback unless told: the Dockerfile and compose set BINAUDIT_SERVE__HOST=0.0.0.0.
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)  # SageMaker's container contract: 8080
    # When set, POST /invocations needs `Authorization: Bearer <token>` (else 401); /ping and
    # /metrics stay open for health checks and scrapes. 16+ characters: no guessable token.
    auth_token: SecretStr | None = Field(None, min_length=16)
    # A client that sent its headers must deliver the whole body within this time, or get
    # 408 and lose its slot (a slow-loris client would otherwise hold one of max_queue).
    body_read_timeout_s: float = Field(15.0, gt=0)
    # SageMaker real-time invocations carry at most 6 MB; larger bodies get 413.
    max_body_bytes: int = Field(6 * 1024 * 1024, ge=1)
    # Requests admitted and not yet answered; one more gets 503 + Retry-After.
    max_queue: int = Field(64, ge=1)
    request_timeout_s: float = Field(30.0, gt=0)
    # None: the autotuned batch size (see inference.max_batch_size); a number pins it.
    max_batch_size: int | None = Field(None, ge=1, le=1024)
    # Shorter than the worker's: a caller is waiting on each request.
    max_wait_ms: int = Field(10, ge=1)
    # SIGTERM: stop accepting, answer what is in flight within this deadline, then exit.
    shutdown_grace_s: float = Field(20.0, ge=0)


# The public placeholder older releases shipped as the default: refused everywhere.
PLACEHOLDER_SESSION_SECRET = "dev-only-insecure-console-session-secret"
MIN_SESSION_SECRET = 32


class ConsoleSettings(BaseModel):
    """``binaudit console``: the auditors' web application (README, Auditor console)."""

    model_config = _FROZEN

    host: str = "127.0.0.1"
    port: int = Field(8090, ge=0, le=65535)
    # Signs the session cookie. None: a random secret per process (sessions end on restart and
    # each replica has its own). Shorter than MIN_SESSION_SECRET is refused outside test.
    session_secret: SecretStr | None = None
    session_max_age_s: int = Field(8 * 3600, ge=60)
    # Secure cookies (HTTPS only). None: on in production, off elsewhere; false in production
    # is refused.
    secure_cookies: bool | None = None
    # The console's own database login (migration 0004); it may only SET ROLE to the auditor
    # and reviewer roles. Host, port and database come from db.url.
    db_user: str = "binaudit_console"
    db_password: SecretStr | None = None
    db_pool_size: int = Field(5, ge=1)
    # SSO: a reverse proxy that authenticates people sets this header to the account name;
    # trusted only from these peer addresses. None: password sign-in only.
    trusted_user_header: str | None = None
    trusted_proxies: tuple[str, ...] = ("127.0.0.1", "::1")
    page_size: int = Field(50, ge=1, le=500)
    # Full images: "proxy" (the console fetches and serves them; browsers need no S3 access)
    # or "presigned" (a redirect to a presigned S3 URL valid presigned_url_ttl_s; browsers
    # must reach S3). Thumbnails are always made and served by the console.
    image_delivery: Literal["proxy", "presigned"] = "proxy"
    presigned_url_ttl_s: int = Field(300, ge=30, le=3600)
    # Browsers may cache proxied images this long.
    image_max_age_s: int = Field(300, ge=0)
    image_cache_mb: int = Field(64, ge=0)
    thumbnail_px: int = Field(160, ge=32, le=1024)
    # Overview aggregates are recomputed at most this often.
    overview_cache_s: float = Field(60.0, ge=0)
    # Sign-in throttling, per console process: this many failures within the window for one
    # account name (or from one client address) answer 429 until the window has passed.
    login_max_failures: int = Field(5, ge=1)
    login_max_failures_per_address: int = Field(20, ge=1)
    login_failure_window_s: float = Field(300.0, gt=0)
    # Password checks (argon2id, 64 MiB each) running at once; one more is answered 503.
    login_concurrency: int = Field(2, ge=1)
    # Export limits (one export at a time per process): rows, and with images their number
    # and total size.
    export_max_rows: int = Field(100_000, ge=1)
    export_max_images: int = Field(5_000, ge=0)
    export_max_mb: float = Field(2048.0, gt=0)

    @field_validator("session_secret")
    @classmethod
    def _not_the_placeholder(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value() == PLACEHOLDER_SESSION_SECRET:
            raise ValueError("BINAUDIT_CONSOLE__SESSION_SECRET is the public placeholder of "
                             "older releases: set a random secret or leave it unset")
        return value

    def cookies_secure(self, environment: str) -> bool:
        """Whether the session cookie carries ``Secure`` (default: in production only)."""
        return self.secure_cookies if self.secure_cookies is not None else (
            environment == "production")

    def secret_problem(self, environment: str) -> str | None:
        """Why these settings must not run the console in ``environment`` (None: fine)."""
        secret = self.session_secret.get_secret_value() if self.session_secret else None
        if secret == PLACEHOLDER_SESSION_SECRET:
            return "BINAUDIT_CONSOLE__SESSION_SECRET is the public placeholder"
        if secret is not None and environment != "test" and len(secret) < MIN_SESSION_SECRET:
            return (f"BINAUDIT_CONSOLE__SESSION_SECRET must be at least {MIN_SESSION_SECRET} "
                    "characters")
        if environment == "production" and self.secure_cookies is False:
            return ("BINAUDIT_CONSOLE__SECURE_COOKIES=false is refused in production: the "
                    "session cookie must be HTTPS-only (serve the console behind TLS)")
        return None


class ServicesSettings(BaseModel):
    """Ports and folders of the local Kafka/Postgres/S3 run by ``binaudit services``."""

    model_config = _FROZEN

    root: Path = Path(".services")
    # Below Linux's ephemeral range (32768-60999): a port in it can be taken at any moment as
    # the source port of some client connection, and then the server cannot bind it.
    kafka_port: int = 19092
    kafka_controller_port: int = 19093
    postgres_port: int = 15432
    s3_port: int = 15000
    kafka_jars: Path = Path.home() / ".cache" / "binaudit" / "kafka-jars"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="BINAUDIT_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
        frozen=True,
    )

    environment: Literal["development", "test", "production"] = "development"
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    kafka: KafkaSettings = KafkaSettings()
    s3: S3Settings = S3Settings()
    abid: AbidSourceSettings = AbidSourceSettings()
    db: DatabaseSettings = DatabaseSettings()
    inference: InferenceSettings = InferenceSettings()
    registry: RegistrySettings = RegistrySettings()
    worker: WorkerSettings = WorkerSettings()
    serve: ServeSettings = ServeSettings()
    console: ConsoleSettings = ConsoleSettings()
    services: ServicesSettings = ServicesSettings()

    @model_validator(mode="before")
    @classmethod
    def _moved_settings(cls, data: Any) -> Any:
        return _move_worker_settings(data) if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _console_fits_environment(self) -> Settings:
        # Only explicit misconfigurations fail here (the defaults pass everywhere), so a
        # worker that never serves the console is not held up by console settings.
        problem = self.console.secret_problem(self.environment)
        if problem:
            raise ValueError(problem)
        return self
