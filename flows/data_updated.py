"""Tell Prefect that training data changed: `python -m flows.data_updated PATH [PATH ...]`.

For each local file or folder, sends the event ``sftflow.data.updated`` (resource
``sftflow.data.<absolute path>``) when its content digest differs from the last one announced for that
path, by this command or by the ``watch-data`` flow; an unchanged path sends nothing. The trigger on
the ``sft-retrain`` deployment then starts one retraining run on that path.

Needs PREFECT_API_URL: the server that runs sft-retrain. Exit codes: 0 done (sent or unchanged),
2 a path is missing or not local (the message names it), 1 PREFECT_API_URL is not set or the
server could not be reached.
"""

from __future__ import annotations

import argparse
import sys

from sft_core.errors import BAD_INPUT_EXIT_CODE, SFTError
from tasks.data_events import announce_if_changed, require_api


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.data_updated", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", metavar="PATH", help="local data file or folder")
    parser.add_argument("--force", action="store_true", help="send the event even if the digest is unchanged")
    args = parser.parse_args(argv)
    try:
        require_api()
    except RuntimeError as error:
        print(f"data_updated: {error}", file=sys.stderr)
        return 1
    code = 0
    for path in args.paths:  # one bad path does not keep the others from being announced
        try:
            print(announce_if_changed(path, force=args.force).describe())
        except SFTError as error:
            print(f"data_updated: {error}", file=sys.stderr)
            code = max(code, BAD_INPUT_EXIT_CODE)
        except Exception as error:  # noqa: BLE001 - the server or network: say so, and exit non-zero
            print(f"data_updated: {path}: could not announce: {error!r}", file=sys.stderr)
            code = max(code, 1)
    return code


if __name__ == "__main__":
    sys.exit(main())
