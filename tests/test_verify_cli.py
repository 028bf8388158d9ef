"""`preprocess verify`, `inspect` and the command line as users run it."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile

import pytest
from click.testing import CliRunner

from preprocess.cli import main
from preprocess.verify import verify_build


@pytest.fixture
def build_copy(tiny_build, tmp_path):
    out, _ = tiny_build
    copy = tmp_path / "build"
    shutil.copytree(out, copy)
    return copy


def test_verify_passes_on_a_fresh_build(tiny_build):
    problems, checked = verify_build(str(tiny_build[0]))
    assert problems == [] and checked == 4


def test_verify_catches_a_flipped_byte(build_copy):
    shard = build_copy / "train" / "train-000001.tar"
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0x01
    shard.write_bytes(bytes(data))
    problems, _ = verify_build(str(build_copy))
    assert any("train-000001.tar: sha256 differs" in p for p in problems)
    result = CliRunner().invoke(main, ["verify", str(build_copy)])
    assert result.exit_code == 1 and "train-000001.tar: sha256 differs" in result.output


def test_verify_catches_missing_shard_stale_index_and_truncation(build_copy):
    os.remove(build_copy / "val" / "val-000000.tar")
    index = build_copy / "train" / "train-000000.idx"
    index.write_text(index.read_text().replace(" 512 ", " 1024 ", 1))
    shard = build_copy / "train" / "train-000002.tar"
    shard.write_bytes(shard.read_bytes()[:5000])
    problems = "\n".join(verify_build(str(build_copy))[0])
    assert "val-000000.tar: missing" in problems
    assert "train-000000.idx: does not match its shard" in problems
    assert "train-000002.tar: 5000 bytes, manifest says" in problems


def test_verify_rejects_hostile_member_names_and_links(tmp_path):
    """A tar with a path-traversal name and a symlink: reported, and nothing is extracted."""
    from preprocess.verify import _check_members

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("../evil.jpg")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
        link = tarfile.TarInfo("00000000.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
        pickled = tarfile.TarInfo("00000001.pyd")
        pickled.size = 1
        tar.addfile(pickled, io.BytesIO(b"x"))
    problems, _, _ = _check_members(buf.getvalue(), "hostile.tar", 256, 10)
    assert any("'../evil.jpg'" in p for p in problems)
    assert any("'00000000.jpg' is not a regular file" in p for p in problems)
    assert any("'00000001.pyd'" in p for p in problems)
    assert not (tmp_path.parent / "evil.jpg").exists()


def test_inspect_prints_summary_and_statistics(tiny_build):
    result = CliRunner().invoke(main, ["inspect", str(tiny_build[0])])
    assert result.exit_code == 0, result.output
    assert "train: 24 samples of 24 found in 3 shards" in result.output
    assert "eigval [" in result.output and "converted: cmyk 2" in result.output


def test_inspect_and_verify_name_a_missing_manifest(tmp_path):
    for command in ("inspect", "verify"):
        result = CliRunner().invoke(main, [command, str(tmp_path)])
        assert result.exit_code != 0 and "manifest.json not found" in result.output


def test_cli_errors_are_clear_not_tracebacks(tiny_build, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["build-shards", "--src", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "is not a directory" in result.output and "Traceback" not in result.output
    result = runner.invoke(main, ["build-shards", "--src", str(tmp_path), "--out", str(tiny_build[0])])
    assert result.exit_code == 1 and "already holds a build" in result.output


def test_console_scripts_end_to_end(tmp_path):
    """make-sample -> build-shards -> verify -> inspect, as a user runs them."""
    bin_dir = os.path.dirname(sys.executable)
    preprocess = os.path.join(bin_dir, "preprocess")

    def run(*args):
        return subprocess.run([preprocess, *args], capture_output=True, text=True, check=True, timeout=300)

    run("make-sample", "--out", str(tmp_path / "src"), "--classes", "2", "--train-per-class", "5",
        "--val-per-class", "2", "--large-images", "0")  # fmt: skip
    built = run("build-shards", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--workers", "2")
    assert "processed 14 images" in built.stdout and "written: train 10, val 4" in built.stdout
    assert "img/s" in built.stderr  # the progress bar, with its rate
    assert "OK: 2 shards" in run("verify", str(tmp_path / "out")).stdout
    assert "classes: 2" in run("inspect", str(tmp_path / "out")).stdout
    failed = subprocess.run([preprocess, "build-shards", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "out")],
                            capture_output=True, text=True)  # fmt: skip
    assert failed.returncode != 0 and "--overwrite" in failed.stderr
