"""All settings in one place: flags override environment variables (``NORMLAB_*``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from worker.training.datasets import default_data_dir


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NORMLAB_", extra="ignore")

    # Storage. The default is the embedded mode: one SQLite file, no Postgres.
    database_url: str = "sqlite:///./normlab.db"
    # None = embedded: a filesystem queue under data_dir and a worker process started by `serve`.
    broker_url: str | None = None
    data_dir: Path = Field(default_factory=default_data_dir)
    # Checkpoints; unset: data_dir/artifacts (never the working directory). API and workers
    # must share it (a volume in compose).
    artifacts_dir: Path = Path("artifacts")

    # Routing: which queue a config with device "auto" goes to ("gpu" where GPU workers exist).
    auto_queue: Literal["cpu", "gpu"] = "cpu"
    worker_device: str | None = None  # a worker's --device, overriding "auto"/"cuda"
    # Intra-op threads per training process. Unset: a worker's job uses every core but one (the
    # other is its metric writer's, worker.training.device.job_threads); `normlab train` and
    # `study run --local` use torch's default, one per core. Several jobs on one CPU machine
    # should split the cores rather than oversubscribe them.
    torch_threads: int | None = Field(None, ge=1, le=256)
    metric_flush_s: float = Field(1.0, gt=0, le=60)
    # Fused training: a study's fusable members go to a worker in groups of at most this many,
    # trained as one stacked network (1: every member alone). Unset: 8 on the cpu queue, 32 on
    # the gpu queue (docs/benchmarks.md, "Fused training").
    fuse_max: int | None = Field(None, ge=1, le=256)
    # Redis redelivers an unacknowledged job after this long; claims make redelivery harmless.
    visibility_timeout_s: int = Field(6 * 3600, ge=1)
    # How often a Redis worker sweeps for unacknowledged messages to redeliver (None: kombu's
    # default, about every 100 s). Tests shorten it to provoke redelivery.
    redis_restore_interval_s: int | None = Field(None, ge=1)
    # The metric sink keeps retrying a lost database this long before failing the experiment.
    db_outage_limit_s: float = Field(300.0, gt=0)

    # Reliability (see docs/reliability.md).
    heartbeat_timeout_s: float = Field(60.0, gt=0)  # a running job silent this long is lost
    max_attempts: int = Field(3, ge=1, le=100)  # lost-worker retries before "worker lost"
    queued_grace_s: float = Field(60.0, gt=0)  # queued this long without a claim: send again...
    # ...unless the broker holds its message; one a worker took counts for this long (a live
    # worker claims within seconds: a job process starts, then claims).
    claim_window_s: float = Field(60.0, gt=0)
    max_run_s: float = Field(24 * 3600.0, gt=0)  # per experiment, across attempts
    reconcile_interval_s: float = Field(10.0, gt=0)
    reconcile_in_worker: bool = True  # each worker process also runs the reconciler

    # Security (see docs/security.md).
    # "auto": keys are required as soon as one exists (a server without keys must bind loopback);
    # "required": always (the compose deployment).
    auth: Literal["auto", "required"] = "auto"
    bootstrap_admin_key: str | None = None  # created at startup if missing (compose)
    max_active_per_owner: int = Field(20, ge=1)  # queued + running experiments per owner
    max_steps_per_experiment: int = Field(10_000_000, ge=1)  # epochs × steps per epoch
    max_study_members: int = Field(512, ge=1, le=100_000)  # cells × seeds of one study

    # Operations. verbose: Celery's banner and per-task lines, uvicorn's startup lines and
    # access log, known-harmless warnings (quiet by default: state changes and real warnings).
    verbose: bool = False
    # A worker's own Prometheus endpoint (see README, "Metrics for operators").
    worker_metrics_port: int | None = Field(None, ge=1, le=65535)

    # HTTP.
    stream_poll_s: float = Field(0.5, gt=0, le=10)  # how often an SSE stream checks for news
    # Comma-separated in the environment; empty = CORS off.
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_body_bytes: int = 1024 * 1024

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [o.strip() for o in value.split(",") if o.strip()]
        return value

    @field_validator("database_url")
    @classmethod
    def _supported_database(cls, value: str) -> str:
        # psycopg 3 is the one Postgres driver NormLab ships (its metric store speaks to it
        # directly): a bare postgresql:// URL means it rather than SQLAlchemy's psycopg2 default.
        scheme, sep, rest = value.partition("://")
        if scheme in ("postgres", "postgresql"):
            return f"postgresql+psycopg{sep}{rest}"
        if scheme == "postgresql+psycopg" or scheme == "sqlite" or scheme.startswith("sqlite+"):
            return value
        raise ValueError(f"unsupported database URL scheme {scheme!r}: use sqlite:///PATH or "
                         "postgresql://USER@HOST:PORT/DB")

    @model_validator(mode="after")
    def _artifacts_under_data_dir(self) -> Self:
        if "artifacts_dir" not in self.model_fields_set:
            self.artifacts_dir = self.data_dir / "artifacts"
        return self

    @property
    def embedded(self) -> bool:
        return self.broker_url is None

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def queue_dir(self) -> Path:
        return self.data_dir / "queue"

    def fuse_max_for(self, queue: str) -> int:
        """The group size for a queue: the setting, or the default measured for its device."""
        if self.fuse_max is not None:
            return self.fuse_max
        return 32 if queue == "gpu" else 8

    def checkpoint_path(self, experiment_id: object) -> Path:
        return self.artifacts_dir / "checkpoints" / f"{experiment_id}.safetensors"

    def delete_checkpoint(self, experiment_id: object) -> None:
        """The checkpoint and any staged one a killed job left (``worker.sink``)."""
        published = self.checkpoint_path(experiment_id)
        for path in (published, staged_path(published)):
            path.unlink(missing_ok=True)


def staged_path(checkpoint: Path) -> Path:
    """Where a job writes a checkpoint before its points are stored (see ``worker.sink``)."""
    return checkpoint.with_name(checkpoint.name + ".staged")


@lru_cache
def get_settings() -> Settings:
    return Settings()
