"""Entry point for `ray submit cluster/config.yaml rift_sweep/run.py -- --config search_spaces/X.yaml [...]`.

`ray submit` copies only this file to the head node and runs it there, so it imports the installed package
with absolute imports and works from any directory. It joins the running cluster (RAY_ADDRESS, or the one
`ray start` left on this node) or starts a local Ray. Flags: the same as `rift-sweep sweep`.
Also: `python -m rift_sweep.run --config ...`.
"""

import sys

from rift_sweep.cli import main


def run(argv: list[str] | None = None) -> int:
    return main(["sweep", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(run())
