"""``python -m spritegen ...``: the same as the ``spritegen`` command. Launchers that start a module
need it: ``accelerate launch --num_processes 4 -m spritegen train ldm --stage unet``."""

import sys

from spritegen.cli import main

if __name__ == "__main__":
    sys.exit(main())
