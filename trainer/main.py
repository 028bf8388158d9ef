"""Train AlexNet on ImageNet shards: `torchrun --nproc_per_node=N trainer/main.py --data SHARDS --out RUN_DIR`.

Also runs as one process (`python trainer/main.py ...`) and as a module (`torchrun -m trainer.main ...`). The
program itself, top to bottom, is trainer/train.py; this file only makes sure it can be imported.

Run as a file, Python puts this file's directory (trainer/) first on sys.path, not the directory that holds the
`trainer` package; so a checkout that was never installed could not import `trainer`, and the trainer's own modules
would shadow any top-level module of the same name. Putting the package's parent in that first slot fixes both,
and makes the run use the `trainer` (and `pipeline`) next to this file, whether that is a checkout or site-packages.
"""

import os
import sys


def _run() -> int:
    here = os.path.dirname(os.path.realpath(__file__))
    if __package__ in (None, "") and os.path.realpath(sys.path[0]) == here:
        sys.path[0] = os.path.dirname(here)
    from trainer.train import main

    return main()


if __name__ == "__main__":
    sys.exit(_run())
