"""The `preprocess` command: a thin click layer that fills a config and calls the library."""

from __future__ import annotations

import logging
import os
import sys

import click

from preprocess.image import DEFAULT_MAX_PIXELS

_SRC_HELP = "ImageNet source tree: a local path or any fsspec URL (s3://, gs://, ...)."


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("-v", "--verbose", is_flag=True, help="Log more.")
def main(verbose: bool) -> None:
    """Prepare ImageNet for AlexNet-style training: WebDataset shards, DALI indexes, train statistics."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(message)s")


@main.command("build-shards")
@click.option("--src", required=True, help=_SRC_HELP)
@click.option("--out", default="shards", help="Output directory or fsspec URL.")
@click.option("--layout", type=click.Choice(["auto", "imagenet", "kaggle"]), default="auto", help="Source layout.")
@click.option(
    "--val-labels",
    default=None,
    help="For a flat val/: a file of lines '<file name> <wnid>', or the devkit's ILSVRC2012_validation_ground_truth.txt.",
)
@click.option(
    "--devkit-meta",
    default=None,
    help="The devkit's meta.mat, mapping its class ids to wnids (default: beside --val-labels).",
)
@click.option("--class-names", default=None, help="File of lines '<wnid> <name>' (default: LOC_synset_mapping.txt).")
@click.option("--size", default=256, help="Short side after resizing, and the side of the central crop.")
@click.option("--quality", default=90, help="JPEG quality of the stored images.")
@click.option("--shard-size", default=1000, help="Samples per shard (about).")
@click.option("--workers", default=os.cpu_count() or 1, help="Worker processes (default: all cores); local engine.")
@click.option("--seed", default=0, help="Seed of the global shuffle: same seed, same bytes.")
@click.option("--max-skipped", default=10, help="More skipped inputs than this fail the build (after the report).")
@click.option("--max-pixels", default=DEFAULT_MAX_PIXELS, help="Larger images are skipped as too_large.")
@click.option("--follow-links", is_flag=True, help="Read links that lead out of --src (else: skipped).")
@click.option("--limit", type=int, default=None, help="Only the first N inputs of each split (smoke runs).")
@click.option("--overwrite", is_flag=True, help="Replace an existing build at --out.")
@click.option("--resume", is_flag=True, help="Finish an interrupted build: rebuild only missing or damaged shards.")
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    help="local: worker processes on this machine. ray: one Ray task per shard on a Ray cluster (pip install "
    "'alexnet-pipeline[ray]'); --src and --out must then be reachable from every node.",
)
@click.option(
    "--ray-address",
    default="auto",
    help="With --engine ray: the cluster to use. auto: RAY_ADDRESS or a cluster started on this node, else a "
    "local Ray instance on 127.0.0.1 (with --workers CPUs); local: always a local instance.",
)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def build_shards_command(no_progress: bool, **options) -> None:
    """Resize, center-crop and shard an ImageNet tree; compute the train mean image and RGB PCA."""
    from preprocess.build import BuildAlreadyFinished, BuildConfig, ShardWriteError, TooManySkipped, build_shards
    from preprocess.interrupt import RESUME_HINT, exit_code, raise_on_sigterm
    from preprocess.layout import LayoutError
    from preprocess.lock import BuildLocked
    from preprocess.output import OutputExistsError
    from preprocess.parallel import WorkerFailed
    from preprocess.ray_engine import RayUnavailable

    raise_on_sigterm()
    try:
        cfg = BuildConfig(**options, progress=not no_progress)
        report = build_shards(cfg)
    except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM, after the build has unwound
        click.echo(f"build-shards stopped by {'SIGTERM' if exit_code(stop) == 143 else 'Ctrl-C'}; {RESUME_HINT}", err=True)
        sys.exit(exit_code(stop))
    except BuildAlreadyFinished as e:
        click.echo(str(e))
        return
    except (LayoutError, OutputExistsError, BuildLocked, ShardWriteError, WorkerFailed, RayUnavailable, ValueError) as e:
        raise click.ClickException(str(e)) from e
    except TooManySkipped as e:
        click.echo(str(e), err=True)
        sys.exit(2)
    click.echo(report.summary())
    click.echo(f"manifest: {os.path.join(cfg.out, 'manifest.json')}")


@main.command("make-sample")
@click.option("--out", default="sample", help="Where to write the synthetic ImageNet tree.")
@click.option("--classes", default=10, help="Number of classes.")
@click.option("--train-per-class", default=100, help="Train images per class.")
@click.option("--val-per-class", default=20, help="Val images per class.")
@click.option("--layout", type=click.Choice(["imagenet", "kaggle", "flat-val"]), default="imagenet")
@click.option("--large-images", default=2, help="Images several thousand pixels wide, per split.")
@click.option("--seed", default=0, help="Same seed, same files.")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --out.")
def make_sample_command(**options) -> None:
    """Write a small synthetic dataset in the ImageNet folder layout (with ImageNet's quirks)."""
    from preprocess.sample import SampleConfig, make_sample

    try:
        counts = make_sample(SampleConfig(**options))
    except FileExistsError as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"wrote {counts['train']} train and {counts['val']} val images to {options['out']}")


@main.command("verify")
@click.argument("root", default="shards")
def verify_command(root: str) -> None:
    """Re-check every shard against the manifest; exit 1 on any mismatch."""
    from tqdm import tqdm

    from pipeline.contract import load_manifest
    from preprocess.verify import verify_build

    try:
        total = sum(len(s.shards) for s in load_manifest(root).splits.values())
    except ValueError as e:
        raise click.ClickException(str(e)) from e
    with tqdm(total=total, unit="shard", desc="verify") as bar:
        problems, checked = verify_build(root, progress=lambda _: bar.update())
    for problem in problems:
        click.echo(f"FAIL {problem}", err=True)
    if problems:
        click.echo(f"{len(problems)} problems in {checked} shards", err=True)
        sys.exit(1)
    click.echo(f"OK: {checked} shards match {root}/manifest.json")


@main.command("inspect")
@click.argument("root", default="shards")
def inspect_command(root: str) -> None:
    """Print the manifest summary and the train statistics."""
    from pipeline.contract import ContractError
    from preprocess.verify import inspect_build

    try:
        click.echo(inspect_build(root))
    except ContractError as e:
        raise click.ClickException(str(e)) from e


if __name__ == "__main__":
    main()
