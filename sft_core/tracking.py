"""Where metrics go: always a local metrics.jsonl, plus MLflow, TensorBoard or W&B when configured.

Only the main process tracks. A tracker that fails (say, an unreachable MLflow server) warns once
and is switched off; training goes on, and metrics.jsonl keeps everything for a later sync.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol
from urllib.parse import urlsplit, urlunsplit

from sft_core.config import TRLConfig
from sft_core.errors import ConfigError
from sft_core.layout import EVAL_SAMPLES_FILE, METRICS_FILE, PARAMS_FILE
from sft_core.trlx_fields import resolve_tracking

logger = logging.getLogger(__name__)


class Tracker(Protocol):
    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_samples(self, rows: list[dict[str, Any]], step: int) -> None: ...
    def log_artifact(self, path: Path) -> None: ...
    def finish(self, status: str = "FINISHED") -> None: ...


class JsonlTracker:
    """One JSON object per line: {"step": N, "time": t, metrics...}. Append-only, so resume keeps history."""

    def __init__(self, logging_dir: str | Path):
        self.dir = Path(logging_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.dir / METRICS_FILE

    def log_params(self, params: dict[str, Any]) -> None:
        (self.dir / PARAMS_FILE).write_text(json.dumps(redact_params(params), indent=1, default=str))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        with self.metrics_path.open("a") as f:
            f.write(json.dumps({"step": step, "time": round(time.time(), 3), **metrics}) + "\n")

    def log_samples(self, rows: list[dict[str, Any]], step: int) -> None:
        with (self.dir / EVAL_SAMPLES_FILE).open("a") as f:
            for row in rows:
                f.write(json.dumps({"step": step, **row}, default=str) + "\n")

    def log_artifact(self, path: Path) -> None:
        pass  # already on local disk

    def finish(self, status: str = "FINISHED") -> None:
        pass


def read_history(metrics_path: str | Path) -> list[dict[str, Any]]:
    path = Path(metrics_path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class MLflowTracker:
    """Logs through an MlflowClient bound to one run id: no process-global "active run"."""

    def __init__(self, config: TRLConfig):
        import mlflow

        self.mlflow = mlflow
        self.enabled = True
        self.tracking_uri = resolve_tracking_uri(config.tracking.tracking_uri)
        with _sqlite_store_lock(self.tracking_uri):
            self.client = mlflow.MlflowClient(self.tracking_uri)
        self.owns_run = config.tracking.run_id is None  # else a parent (the Prefect flow) owns and ends it
        self.run_id: str | None = config.tracking.run_id
        self.flush_every_s = 10.0
        self._pending: list[Any] = []
        self._last_flush = time.monotonic()
        if self.owns_run:
            self._guard("start the run", lambda: self._start(config))

    def _start(self, config: TRLConfig) -> None:
        probe_tracking_server(self.tracking_uri)
        tracking = resolve_tracking(config)  # trlX's train.project_name & co. where tracking.* is unset
        experiment_id = ensure_experiment(tracking.experiment_name, self.tracking_uri)
        run = self.client.create_run(experiment_id, run_name=tracking.run_name, tags=tracking.tags)
        self.run_id = run.info.run_id

    def _guard(self, what: str, call: Callable[[], Any]) -> None:
        if not self.enabled:
            return
        try:
            call()
        except Exception as err:  # noqa: BLE001 - any tracking failure must not stop training
            self.enabled = False
            logger.warning("MLflow: could not %s (%s: %s). Tracking to MLflow is off for this run; metrics are "
                           "still in metrics.jsonl (sync later with `python -m sft_core sync-mlflow LOGGING_DIR`)",
                           what, type(err).__name__, str(err).splitlines()[0] if str(err) else "")

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        clean = [Param(k[:250], str(v)[:6000]) for k, v in redact_params(params).items()]
        self._guard("log params", lambda: self.client.log_batch(self.run_id, params=clean))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Buffered: one database write every ``flush_every_s`` (each write costs the training loop time)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._pending += [Metric(mlflow_metric_name(k), float(v), now, step) for k, v in metrics.items()]
        if time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    def flush(self) -> None:
        batch, self._pending = self._pending, []
        self._last_flush = time.monotonic()
        for start in range(0, len(batch), 1000):  # MLflow's log_batch limit
            self._guard("log metrics", lambda: self.client.log_batch(self.run_id, metrics=batch[start:start + 1000]))

    def log_samples(self, rows: list[dict[str, Any]], step: int) -> None:
        if not rows:
            return
        columns = {k: [r.get(k) for r in rows] for k in rows[0]}
        columns["step"] = [step] * len(rows)
        self._guard("log eval samples", lambda: self.client.log_table(
            self.run_id, data=columns, artifact_file=f"eval_samples/step_{step:06d}.json"))

    def log_artifact(self, path: Path) -> None:
        self._guard(f"log {path.name}", lambda: self.client.log_artifact(self.run_id, str(path)))

    def finish(self, status: str = "FINISHED") -> None:
        self.flush()
        if self.owns_run:
            self._guard("end the run", lambda: self.client.set_terminated(self.run_id, status))


class TensorBoardTracker:
    def __init__(self, logging_dir: str | Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("train.tracker", "'tensorboard' needs the tensorboard package: pip install tensorboard")
        self.writer = SummaryWriter(str(Path(logging_dir) / "tensorboard"))

    def log_params(self, params: dict[str, Any]) -> None:
        self.writer.add_text("config", "\n".join(f"{k}: {v}" for k, v in params.items()))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, step)

    def log_samples(self, rows: list[dict[str, Any]], step: int) -> None:
        self.writer.add_text("eval_samples", "\n\n".join(json.dumps(r, default=str) for r in rows), step)

    def log_artifact(self, path: Path) -> None:
        pass

    def finish(self, status: str = "FINISHED") -> None:
        self.writer.close()


class WandbTracker:
    """trlX's default tracker, through Accelerate's W&B tracker. Offline (WANDB_MODE=offline, files under
    logging_dir/wandb) when WANDB_MODE is unset and no W&B server answers."""

    def __init__(self, config: TRLConfig):
        try:
            import wandb  # noqa: F401 - only to fail early, naming the field and the install
        except ImportError:
            raise ConfigError("train.tracker", "'wandb' needs the wandb package: pip install wandb "
                                               "(or set train.tracker to jsonl, mlflow or tensorboard)") from None
        from accelerate.tracking import WandBTracker

        if "WANDB_MODE" not in os.environ and not _reachable(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")):
            os.environ["WANDB_MODE"] = "offline"
            logger.info("No W&B server answers: logging to W&B offline (wandb sync %s later)", config.train.logging_dir)
        tracking = resolve_tracking(config)
        self.tracker = WandBTracker(tracking.experiment_name, name=tracking.run_name,
                                    entity=config.train.entity_name, group=config.train.group_name,
                                    tags=config.train.tags or None, dir=config.train.logging_dir)
        self.tracker.start()

    def log_params(self, params: dict[str, Any]) -> None:
        self.tracker.store_init_configuration(redact_params(params))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.tracker.log(metrics, step=step)

    def log_samples(self, rows: list[dict[str, Any]], step: int) -> None:
        if rows:
            columns = list(rows[0])
            self.tracker.log_table("eval_samples", columns=columns, data=[[r.get(c) for c in columns] for r in rows],
                                   step=step)

    def log_artifact(self, path: Path) -> None:
        pass  # already on local disk

    def finish(self, status: str = "FINISHED") -> None:
        self.tracker.finish()


def _reachable(url: str, timeout_s: float = 2.0) -> bool:
    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname or "localhost", parts.port or 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


class Trackers:
    """Fans every call out to the configured trackers."""

    def __init__(self, trackers: list[Tracker]):
        self.trackers = trackers

    def __getattr__(self, name: str) -> Callable[..., None]:
        def fan_out(*args: Any, **kwargs: Any) -> None:
            for tracker in self.trackers:
                getattr(tracker, name)(*args, **kwargs)
        return fan_out

    @property
    def mlflow_run_id(self) -> str | None:
        return next((t.run_id for t in self.trackers if isinstance(t, MLflowTracker)), None)


def build_trackers(config: TRLConfig, is_main_process: bool) -> Trackers:
    if not is_main_process:
        return Trackers([])
    trackers: list[Tracker] = [JsonlTracker(config.train.logging_dir)]
    if config.train.tracker == "mlflow":
        trackers.append(MLflowTracker(config))
    elif config.train.tracker == "tensorboard":
        trackers.append(TensorBoardTracker(config.train.logging_dir))
    elif config.train.tracker == "wandb":
        trackers.append(WandbTracker(config))
    return Trackers(trackers)


def ensure_experiment(name: str, tracking_uri: str) -> str:
    """The experiment's id, creating it if needed. With sqlite, artifacts go beside the database
    (``mlartifacts/``) rather than wherever the process happens to run."""
    import mlflow

    with _sqlite_store_lock(tracking_uri):
        client = mlflow.MlflowClient(tracking_uri)  # opening a new sqlite store runs its migrations
        found = client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = None
        if tracking_uri.startswith("sqlite:///"):
            location = (Path(tracking_uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
        try:
            return client.create_experiment(name, artifact_location=location)
        except Exception:  # noqa: BLE001 - created meanwhile by a concurrent run (a server has no file lock;
            # the race: https://github.com/mlflow/mlflow/issues/4123)
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id


@contextlib.contextmanager
def _sqlite_store_lock(tracking_uri: str) -> Iterator[None]:
    """Runs that start at once on a new sqlite store would each run its schema migrations and
    collide; a file lock beside the database lets the first create it and the others find it.

    MLflow takes no such lock: the same race is https://github.com/daizutabi/hydraflow/issues/245
    (with the traceback); an upstream fix, https://github.com/mlflow/mlflow/pull/24321, was closed unmerged."""
    if not tracking_uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    db = Path(tracking_uri[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(f"{db.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def resolve_tracking_uri(configured: str | None) -> str:
    """Config, then $MLFLOW_TRACKING_URI, then sqlite in the working folder (never the file store)."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        uri = f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # sqlite:///x.db is relative to each process's working folder (a launched child runs in the
        # run folder): https://docs.sqlalchemy.org/en/20/dialects/sqlite.html#connect-strings
        uri = f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
    return uri


def probe_tracking_server(uri: str, timeout_s: float = 3.0) -> None:
    """Fail in seconds when an http(s) tracking server is down; MLflow itself retries for minutes
    (120 s timeout, 5 retries with backoff: https://github.com/mlflow/mlflow/issues/5744)."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname or "localhost", port), timeout=timeout_s).close()
    except OSError as err:
        raise ConnectionError(f"no MLflow server answers at {redact_uri(uri)} ({err})") from None


_SECRET_QUERY = re.compile(r"(?i)\b([\w.-]*(?:token|password|passwd|secret|key|signature|sig|credential)[\w.-]*=)[^&]*")


def redact_uri(uri: str) -> str:
    """The URI with any user:password@ and token-like query values replaced by ***."""
    if "://" not in uri:
        return uri
    parts = urlsplit(uri)
    netloc = f"***@{parts.netloc.rpartition('@')[2]}" if "@" in parts.netloc else parts.netloc
    query = _SECRET_QUERY.sub(r"\1***", parts.query)
    if (netloc, query) == (parts.netloc, parts.query):
        return uri  # untouched (urlunsplit would also rewrite sqlite://// paths)
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def redact_params(params: dict[str, Any]) -> dict[str, Any]:
    """Params as they may be logged: credentials inside URI values are masked."""
    return {k: redact_uri(v) if isinstance(v, str) else v for k, v in params.items()}


def mlflow_metric_name(name: str) -> str:
    """MLflow allows letters, digits, _ - . / and space; sweep suffixes like '@temperature=0.7' are not.

    The rule is MLflow's metric-name check (upstream source, no issue: _validate_metric_name in
    https://github.com/mlflow/mlflow/blob/master/mlflow/utils/validation.py)."""
    return re.sub(r"[^\w\-./ ]", "_", name)


def log_input_dataset(tracking_uri: str, run_id: str, dataset: Any, *, source: str, name: str,
                      context: str = "training") -> None:
    """Record the training set on the run (schema, digest, source) through ``mlflow.data``."""
    import mlflow
    import mlflow.data
    from mlflow.entities import DatasetInput, InputTag

    # "Integer columns in Python cannot represent missing values": token ids never are missing. Why MLflow warns:
    # https://www.mlflow.org/docs/latest/models.html#handling-integers-with-missing-values
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*integer column", category=UserWarning)
        entity = mlflow.data.from_huggingface(dataset, path=source, name=name)._to_mlflow_entity()
    tag = InputTag(key="mlflow.data.context", value=context)
    mlflow.MlflowClient(tracking_uri).log_inputs(run_id, [DatasetInput(entity, [tag])])
