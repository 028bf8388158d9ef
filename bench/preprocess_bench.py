"""build-shards throughput against a hand-written baseline and against the decoder's limit, on the same cores.

    python bench/preprocess_bench.py                 # images cut from real photographs (cached in bench/out/)
    python bench/preprocess_bench.py --synthetic     # the generated images instead, to see how figures differ
    python bench/preprocess_bench.py /data/imagenet  # any imagenet/kaggle layout: its train split is used
    python bench/preprocess_bench.py --workers 2 --limit 2000
    python bench/preprocess_bench.py --keep-large 10   # ImageNet's share of large images instead of a tenth

Prints what the decoder sees in the files (JPEG bytes and decode cost per pixel, next to ImageNet's bytes per
pixel); images/s for `preprocess build-shards`, for the baseline (bench/baseline_build.py: PIL + Pool +
webdataset ShardWriter + float64 statistics), for the peer (bench/opencv_peer.py: img2dataset's OpenCV resize,
no statistics), and for decoding the same files alone with libjpeg-turbo on the same number of processes (the
limit); the ratios; the CLI's start-up cost; the per-stage cost per image; the cost per image of ours and the
baseline's by the source's size; and the PSNR of our 256x256 outputs and the peer's against the baseline's.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from multiprocessing import Pool

import numpy as np
import simplejpeg
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from baseline_build import Float64Stats, baseline_build, process  # noqa: E402
from opencv_peer import opencv_build  # noqa: E402
from photos import IMAGENET_BYTES_PER_PIXEL, describe  # noqa: E402
from samples import benchmark_tree  # noqa: E402

from preprocess.build import BuildConfig, build_shards  # noqa: E402
from preprocess.image import decode_resize_crop, encode_jpeg  # noqa: E402
from preprocess.layout import discover  # noqa: E402
from preprocess.stats import PixelSums  # noqa: E402
from preprocess.tarshard import ShardWriter  # noqa: E402
from preprocess.worker import load_kernels  # noqa: E402


def decode_only(path: str) -> int:
    """The limit: libjpeg-turbo decoding the source at full size, nothing else."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:3] == b"\xff\xd8\xff":
        try:
            return simplejpeg.decode_jpeg(data, "RGB").size
        except ValueError:
            pass
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return img.width * img.height


def link_tree(items, root: str) -> str:
    """An imagenet-layout tree of links to `items` (train/<wnid>/<file>), whatever layout they came from."""
    for item in items:
        link = os.path.join(root, "train", item.wnid, os.path.basename(item.path))
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(os.path.abspath(item.path), link)
    return root


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def stage_costs(paths: list[str], sample: int = 100) -> dict[str, float]:
    """Milliseconds per image for each stage of our build, on one core."""
    load_kernels()  # numba's first call is the build's start-up, not a per-image cost
    datas, t = [], {}
    t["read"] = timed(lambda: datas.extend(open(p, "rb").read() for p in paths[:sample]))
    decoded = []
    t["decode+resize+crop"] = timed(lambda: decoded.extend(decode_resize_crop(d, size=256, name=".JPEG") for d in datas))
    encoded = []
    t["encode"] = timed(lambda: encoded.extend(encode_jpeg(d.pixels, 90) for d in decoded))
    sums = PixelSums(256)
    t["stats"] = timed(lambda: [sums.add(d.pixels) for d in decoded])
    with tempfile.TemporaryDirectory() as tmp, ShardWriter(os.path.join(tmp, "s.tar")) as writer:
        t["write"] = timed(lambda: [writer.write(f"{i:08d}", {"jpg": e, "cls": b"1"}) for i, e in enumerate(encoded)])
        writer.finish()
    return {k: 1e3 * v / len(datas) for k, v in t.items()}


LARGE = 512  # short side from which an image counts as large (a couple of percent of ImageNet, a tenth of our set)


def short_side(path: str) -> int:
    with Image.open(path) as img:
        return min(img.size)


def costs_by_size(paths: list[str]) -> list[tuple[str, int, float, float]]:
    """(class, images, ours, baseline) in ms per image on one core, by the short side of the source: where each
    build's time goes depends on the size mix, and real trees differ from this set in it."""
    load_kernels()
    classes = {"small (short side < 256)": [], "typical (256-511)": [], "large (>= 512)": []}
    for path in paths:
        short = short_side(path)
        classes[list(classes)[0 if short < 256 else 1 if short < LARGE else 2]].append(path)

    def ours(group):
        sums = PixelSums(256)
        for path in group:
            with open(path, "rb") as f:
                decoded = decode_resize_crop(f.read(), size=256, name=path)
            sums.add(decoded.pixels)
            encode_jpeg(decoded.pixels, 90)

    def baseline(group):
        stats = Float64Stats()
        for path in group:
            stats.add(process((path, 0))[1])

    return [(name, len(group), 1e3 * timed(lambda: ours(group)) / len(group),  # noqa: B023 (called at once)
             1e3 * timed(lambda: baseline(group)) / len(group))  # noqa: B023
            for name, group in classes.items() if group]  # fmt: skip


def psnr_against_baseline(ours_dir: str, baseline_dir: str, order: list[str]) -> tuple[float, float]:
    """(mean, min) PSNR of our output images against the baseline's, matched by source file."""

    def images(directory, key_to_src):
        out = {}
        for name in sorted(os.listdir(directory)):
            if name.endswith(".tar"):
                with tarfile.open(os.path.join(directory, name)) as tar:
                    members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
                for member, data in members.items():
                    key, ext = member.split(".", 1)
                    if ext == "jpg":
                        out[key_to_src(key, members)] = np.asarray(Image.open(io.BytesIO(data)), np.float64)
        return out

    def by_src(directory):
        if os.path.exists(os.path.join(directory, "manifest.json")):  # ours: the source is in each sample's json
            return images(os.path.join(directory, "train"), lambda k, m: json.loads(m[f"{k}.json"])["src"])
        return images(directory, lambda k, m: order[int(k)])  # baseline and peer: keys in input order

    ours, base = by_src(ours_dir), by_src(baseline_dir)
    scores = [10 * np.log10(255**2 / max(np.mean((ours[s] - base[s]) ** 2), 1e-12)) for s in ours if s in base]
    return float(np.mean(scores)), float(np.min(scores))


def startup_seconds(item, tmp: str, workers: int) -> float:
    """Wall time of `preprocess build-shards` from the command line on a one-image tree: what every build pays
    before its first image (interpreter, imports, listing, starting the workers, writing the manifest)."""
    src = link_tree([item], f"{tmp}/one")
    cmd = [sys.executable, "-m", "preprocess.cli", "build-shards", "--src", src, "--out", f"{tmp}/one-out",
           "--workers", str(workers), "--follow-links", "--overwrite", "--no-progress"]  # fmt: skip
    return timed(lambda: subprocess.run(cmd, check=True, capture_output=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", nargs="?", help="imagenet or kaggle tree (default: images cut from real photographs)")
    parser.add_argument("--synthetic", action="store_true", help="the generated images instead of real photographs")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--limit", type=int, default=600, help="images to use")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best time of each contender counts")
    parser.add_argument("--keep-large", type=int, default=None, metavar="N",
                        help=f"drop all but the first N images with a short side >= {LARGE} (ImageNet's own share of "
                             "large images is a couple of percent)")  # fmt: skip
    args = parser.parse_args()

    src = args.src or benchmark_tree(args.limit, args.synthetic)
    dataset = discover(src, with_val=False)
    items = dataset.splits["train"][: args.limit]
    if args.keep_large is not None:
        large = [i for i, item in enumerate(items) if short_side(item.path) >= LARGE]
        dropped = set(large[args.keep_large :])
        items = [item for i, item in enumerate(items) if i not in dropped]
    paths = [i.path for i in items]
    relpaths = [f"train/{i.wnid}/{os.path.basename(i.path)}" for i in items]  # as in the linked tree
    for p in paths:  # warm the page cache for every contender alike
        open(p, "rb").read()
    n = len(paths)
    print(f"{n} images from {src}, {args.workers} workers, {os.cpu_count()} cores, best of {args.rounds} rounds")
    seen = describe(paths)
    print(f"the files: {seen['megapixels_per_image']:.3f} Mpixel per image, {seen['bytes_per_pixel']:.3f} JPEG bytes per "
          f"pixel (ImageNet: {IMAGENET_BYTES_PER_PIXEL:.2f}), full-size decode {seen['decode_ns_per_pixel']:.2f} ns per "
          f"pixel, {seen['decode_ms_per_image']:.2f} ms per image (one core, over {seen['images']} files)")  # fmt: skip

    labelled = [(p, dataset.label[i.wnid]) for p, i in zip(paths, items, strict=True)]
    limit_s = base_s = peer_s = ours_s = float("inf")
    with tempfile.TemporaryDirectory() as tmp:
        chosen = link_tree(items, f"{tmp}/src")  # both builds read exactly these files
        # Interleaved rounds, best of each: a burst of other load on the machine hits one round, not one contender.
        for _ in range(args.rounds):
            with Pool(args.workers) as pool:
                limit_s = min(limit_s, timed(lambda: pool.map(decode_only, paths, chunksize=16)))
            base_s = min(base_s, timed(lambda: baseline_build(labelled, f"{tmp}/base", args.workers)))
            peer_s = min(peer_s, timed(lambda: opencv_build(labelled, f"{tmp}/peer", args.workers)))
            cfg = BuildConfig(
                src=chosen, out=f"{tmp}/ours", workers=args.workers, progress=False, follow_links=True, overwrite=True
            )
            ours_s = min(ours_s, timed(lambda: build_shards(cfg)))  # noqa: B023 (called at once)
        mean_psnr, min_psnr = psnr_against_baseline(f"{tmp}/ours", f"{tmp}/base", relpaths)
        peer_psnr, peer_min_psnr = psnr_against_baseline(f"{tmp}/peer", f"{tmp}/base", relpaths)
        startup_s = min(startup_seconds(items[0], f"{tmp}/startup{r}", args.workers) for r in range(2))

    rate = lambda s: n / s  # noqa: E731
    print()
    print(f"{'contender':44s} {'images/s':>10s}")
    print(f"{'decode only, libjpeg-turbo full size (limit)':44s} {rate(limit_s):10.1f}")
    print(f"{'baseline: PIL + Pool + ShardWriter':44s} {rate(base_s):10.1f}")
    print(f"{'peer: OpenCV as img2dataset, no statistics':44s} {rate(peer_s):10.1f}")
    print(f"{'preprocess build-shards':44s} {rate(ours_s):10.1f}")
    print()
    print(f"build-shards / baseline: {base_s / ours_s:.2f}x   (target >= 2.5x)")
    print(f"build-shards / OpenCV peer: {peer_s / ours_s:.2f}x   (target > 1x, ours computing the statistics)")
    print(f"build-shards / decode-only limit: {limit_s / ours_s:.0%}")
    print(f"output PSNR against the baseline: mean {mean_psnr:.1f} dB, min {min_psnr:.1f} dB   (target >= 30 dB); "
          f"the peer's: mean {peer_psnr:.1f} dB, min {peer_min_psnr:.1f} dB")  # fmt: skip
    print(f"start-up of `preprocess build-shards` from the command line (a one-image build, best of 2): {startup_s:.2f} s; "
          f"the timings above are of the build alone, in this process")  # fmt: skip
    print()
    print("per-stage cost of build-shards, one core, ms per image:")
    for stage, ms in stage_costs(paths).items():
        print(f"  {stage:20s} {ms:6.2f}")
    print()
    print("per image, one core, by the source's size (ours: decode+resize+crop, encode, stats; the baseline: its worker's")
    print("work and its statistics), ms:")
    for name, count, ours_ms, base_ms in costs_by_size(paths):
        print(f"  {name:26s} {count:4d} images   ours {ours_ms:6.2f}   baseline {base_ms:6.2f}   {base_ms / ours_ms:.2f}x")


if __name__ == "__main__":
    main()
