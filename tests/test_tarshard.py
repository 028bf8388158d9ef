"""The shard writer's hand-built USTAR headers are byte-for-byte what tarfile writes."""

from __future__ import annotations

import io
import os
import random
import tarfile

from preprocess.tarshard import ShardWriter


def tarfile_reference(samples: list[tuple[str, dict[str, bytes]]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members in samples:
            for ext in sorted(members):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode, info.uid, info.gid = len(members[ext]), 0, 0o444, 0, 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(members[ext]))
    return buf.getvalue()


def test_shards_are_byte_identical_to_tarfile_and_the_index_points_at_the_data(tmp_path):
    rng = random.Random(0)
    sizes = [0, 1, 511, 512, 513, 1024, 25_000, 10_240]
    samples = [
        (f"{i:08d}", {"cls": str(i).encode(), "jpg": os.urandom(sizes[i % len(sizes)]), "json": b"{}" * rng.randint(0, 300)})
        for i in range(40)
    ] + [("k" * 90, {"jpg": b"x" * 700})]  # a long member name (95 bytes)
    path = str(tmp_path / "shard.tar")
    with ShardWriter(path) as writer:
        for key, members in samples:
            writer.write(key, members)
        done = writer.finish()
    data = open(path, "rb").read()
    assert data == tarfile_reference(samples)
    assert done.bytes == len(data) and len(data) % tarfile.RECORDSIZE == 0
    lines = done.index_text.splitlines()[1:]
    for line, (key, members) in zip(lines, samples, strict=True):
        fields = line.split()
        for i, ext in enumerate(sorted(members)):
            assert fields[4 * i] == ext and fields[4 * i + 3] == f"{key}.{ext}"
            offset, size = int(fields[4 * i + 1]), int(fields[4 * i + 2])
            assert data[offset : offset + size] == members[ext]
