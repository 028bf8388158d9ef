"""The CPU loader's malloc settings (pipeline/allocator.py), checked by what glibc does with a 24 MB block.

Each case runs in a fresh interpreter: the settings are process-wide and cannot be undone.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Prints what glibc did with a 24 MB block: mmap'ed for it alone, and whether the heap kept it after free().
PROBE = textwrap.dedent("""
    import ctypes, json
    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                     "keepcost")]
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
    block = libc.malloc(24 << 20)
    mmapped = libc.mallinfo2().hblkhd >= 24 << 20
    libc.free(block)
    print(json.dumps({"applied": APPLIED, "mmapped": mmapped, "heap_kept": libc.mallinfo2().arena >= 24 << 20}))
""")


def probe(setup: str, env: dict | None = None) -> dict:
    script = setup + "\nAPPLIED = applied\n" + PROBE
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120,
                          env={**clean, **(env or {})})  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only (DALI: Linux)")


def test_glibc_defaults_map_a_large_block_on_its_own():
    """The control: without the settings, glibc serves 24 MB by mmap (what made every batch fault anew)."""
    assert probe("applied = None") == {"applied": None, "mmapped": True, "heap_kept": False}


def test_settings_serve_large_blocks_from_the_heap_and_keep_them():
    result = probe("from pipeline.allocator import keep_batch_memory_mapped\napplied = keep_batch_memory_mapped()")
    assert result == {"applied": True, "mmapped": False, "heap_kept": True}


def test_user_malloc_environment_is_left_alone():
    setup = "from pipeline.allocator import keep_batch_memory_mapped\napplied = keep_batch_memory_mapped()"
    result = probe(setup, env={"MALLOC_TRIM_THRESHOLD_": "131072"})
    assert result["applied"] is False
    result = probe(setup, env={"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"})
    assert result == {"applied": False, "mmapped": True, "heap_kept": False}


@pytest.mark.parametrize("tuning", [True, False])
def test_cpu_loader_applies_the_settings_unless_told_not_to(coded_build, tuning):
    setup = textwrap.dedent(f"""
        from pipeline import ImageNetLoader, allocator
        loader = ImageNetLoader({str(coded_build.root)!r}, device="cpu", num_threads=1, batch_size=4,
                                shuffle_buffer=8, malloc_tuning={tuning})
        next(iter(loader))
        applied = allocator._applied  # None: never asked
    """)
    result = probe(setup)
    if tuning:
        assert result == {"applied": True, "mmapped": False, "heap_kept": True}
    else:  # after DALI's own frees, glibc's moving threshold decides where 24 MB goes: only the flag is certain
        assert result["applied"] is None
