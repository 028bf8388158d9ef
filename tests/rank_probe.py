"""Run by torchrun in tests: which samples this rank's train and val loaders yield, by label, as the trainer builds them.

    torchrun ... tests/rank_probe.py --data SHARDS --out DIR [trainer options]   -> DIR/rank-<RANK>.json

It imports `trainer` as the tests do, from the package that `make venv` installs.
"""

from __future__ import annotations

import json
import os
import sys

from trainer import dist
from trainer.config import parse_args
from trainer.data import make_loader


def main() -> None:
    cfg = parse_args(sys.argv[1:], default_device="cpu")
    info = dist.setup("cpu")
    train, val = make_loader(cfg, info, "train"), make_loader(cfg, info, "val")
    seen = {"rank": info.rank, "local_rank": info.local_rank, "world_size": info.world_size,
            "train": [[int(y) for _, labels in train for y in labels] for _ in range(cfg.epochs)],
            "val": [int(y) for _, labels in val for y in labels]}
    with open(os.path.join(cfg.out, f"rank-{info.rank}.json"), "w") as f:
        json.dump(seen, f)
    dist.teardown(info)


if __name__ == "__main__":
    main()
