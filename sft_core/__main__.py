import sys

from sft_core.cli import main

sys.exit(main())
