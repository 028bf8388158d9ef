"""R3: pickled members in a shard are never unpickled; the loader reads only the members it asked for."""

from __future__ import annotations

import os
import pickle

from coded_shards import coded_jpeg, write_shard

from pipeline import ImageNetLoader


class _Payload:
    """Unpickling this creates a directory: proof that someone decoded the member."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_pickled_members_are_ignored_and_never_unpickled(tmp_path):
    marker = str(tmp_path / "unpickled")
    payload = pickle.dumps(_Payload(marker))
    members = [
        (f"s{i:03d}", {"jpg": coded_jpeg(i), "cls": str(i % 3).encode(), "pyd": payload, "pth": payload})
        for i in range(6)
    ]
    write_shard(str(tmp_path / "shards" / "train" / "train-0000.tar"), members, with_index=False)
    loader = ImageNetLoader(str(tmp_path / "shards"), split="train", device="cpu", batch_size=3, crop_size=224,
                            num_threads=1, normalization="channel", mean=(0.5,) * 3, std=(0.25,) * 3,
                            lighting_std=0.0, drop_last=False, shuffle_buffer=4)  # fmt: skip
    labels = sorted(int(v) for _, batch in loader for v in batch)
    assert labels == sorted(i % 3 for i in range(6))
    assert not os.path.exists(marker)
    pickle.loads(pickle.dumps(_Payload(str(tmp_path / "control"))))  # the payload does act when unpickled
    assert os.path.isdir(tmp_path / "control")
