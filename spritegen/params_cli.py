"""``spritegen params``: print the resolved params (every section validated, defaults filled in)."""

import sys

import yaml

from spritegen.params import resolved


def main(args) -> int:
    yaml.safe_dump(resolved(args.params, args.preset), sys.stdout, sort_keys=False)
    return 0
