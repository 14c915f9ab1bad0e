"""The errors sft_core raises on bad input.

Each subclasses ValueError, so callers that already catch ValueError keep working,
and each message names the config field, file or line the user has to fix.
"""

from __future__ import annotations

BAD_INPUT_EXIT_CODE = 2  # `python -m sft_core` exits with this on an SFTError: a launcher knows not to retry
# A launched worker that knows why it fails prints this and the reason on one line (sft_core.nodes does for a
# lost node); sft_core.launch.run_child puts the first such reason into its error, ahead of the log's tail.
CAUSE_MARK = "sftflow: training failed because "
# After CAUSE_MARK: the worker refused its input. torchrun exits 1 whatever its workers exit with, so this is
# how the launcher learns that a retry will not help (it then fails with BAD_INPUT_EXIT_CODE).
BAD_INPUT_CAUSE = "its input is wrong: "


class SFTError(ValueError):
    """Base class: any input sft_core refuses."""


class ConfigError(SFTError):
    """A config value is missing, unknown or impossible. The message names the field."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


class DataError(SFTError):
    """A data source is malformed or empty. The message names the file and line where known."""

    def __init__(self, message: str, *, source: str | None = None, line: int | None = None):
        self.source = source
        self.line = line
        where = ""
        if source is not None:
            where = f"{source}:{line}: " if line is not None else f"{source}: "
        super().__init__(f"{where}{message}")


class ModelLoadError(SFTError):
    """A model or tokenizer cannot be loaded from the configured path."""


class MetricError(SFTError):
    """A metric cannot be resolved, or returned something we cannot log."""


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss). The message names the step."""
