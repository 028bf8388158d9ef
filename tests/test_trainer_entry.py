"""`trainer/main.py` runs the `trainer` package next to it: from a checkout that was never installed, and from an
installed package (a copy on sys.path), as a file or as a module. The DDP tests run it under torchrun."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("where, how", [("checkout", "file"), ("installed", "file"), ("installed", "module")])
def test_main_imports_the_trainer_next_to_it(tmp_path, where, how):
    root = tmp_path / where
    for package in ("trainer", "pipeline"):
        shutil.copytree(os.path.join(REPO, package), root / package, ignore=shutil.ignore_patterns("__pycache__"))
    # The copy says where it was imported from: the venv's editable install would otherwise serve the repo's trainer.
    with open(root / "trainer" / "__init__.py", "a") as f:
        f.write('\nprint("trainer imported from", __file__)\n')
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if where == "installed":
        env["PYTHONPATH"] = str(root)
    target = ["-m", "trainer.main"] if how == "module" else [str(root / "trainer" / "main.py")]
    proc = subprocess.run([sys.executable, *target, "--help"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"trainer imported from {root / 'trainer' / '__init__.py'}" in proc.stdout
    assert "--data" in proc.stdout and "--max-steps" in proc.stdout
