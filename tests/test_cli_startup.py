"""`preprocess --help` starts at once: the CLI imports nothing heavy until a command runs."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "numba", "nvidia.dali", "fsspec", "sklearn", "webdataset")


def test_help_imports_no_heavy_module():
    probe = (
        "import sys\n"
        "from preprocess.cli import main\n"
        "for argv in (['--help'], ['build-shards', '--help'], ['verify', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, (argv, e.code)\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout[-500:]
