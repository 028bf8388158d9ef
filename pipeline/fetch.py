"""Pre-warm a machine's shard cache: `python -m pipeline.fetch s3://bucket/shards --split train --split val`.

Downloads the splits of a remote build into the cache the loader reads (the same place, the same checks), so
a job's start-up is not spent downloading. Run it once per machine, e.g. from the job script before torchrun.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.errors import LoaderError
from pipeline.sources import default_cache_dir, find_shards

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.fetch", description=__doc__.splitlines()[0])
    parser.add_argument("root", help="the build's root URL (s3://..., gs://..., any fsspec URL)")
    parser.add_argument("--split", action="append", help="a split to fetch (repeat for several; default: train, val)")
    parser.add_argument("--cache-dir", default=None, help=f"the cache (default: {default_cache_dir()})")
    args = parser.parse_args(argv)
    try:
        for split in args.split or ["train", "val"]:
            shards = find_shards(args.root, split, cache_dir=args.cache_dir, progress=True)
            print(f"{split}: {len(shards.paths)} shards cached under {shards.paths[0].rsplit('/', 2)[0]}")
    except LoaderError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
