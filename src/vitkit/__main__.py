"""`python -m vitkit COMMAND ...`, the `vitkit` command; what `torchrun ... -m vitkit train ...`
starts in every process."""

import sys

from vitkit.cli.main import main

sys.exit(main())
