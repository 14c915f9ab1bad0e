"""Train from a YAML config and record, per rank, which rows each step consumed.

Run directly (one process) or under torchrun (several). Writes OUT/rows-rank{R}.json.
"""

import json
import sys
from pathlib import Path

from sft_core import AccelerateSFTTrainer, TRLConfig, train


class RecordingTrainer(AccelerateSFTTrainer):
    rows_seen: list[list[int]] = []

    def _collate(self, rows):
        self.rows_seen.append(list(rows))
        return super()._collate(rows)


def main() -> None:
    config_path, out = sys.argv[1], Path(sys.argv[2])
    trainer = train(config=TRLConfig.load_yaml(config_path), trainer_cls=RecordingTrainer)
    out.mkdir(parents=True, exist_ok=True)
    rank = trainer.accelerator.process_index
    (out / f"rows-rank{rank}.json").write_text(json.dumps(trainer.rows_seen))


if __name__ == "__main__":
    main()
