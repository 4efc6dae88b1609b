"""Faults of the compiled-package cache and of background builds: none gives a wrong answer.

A damaged package (a flipped byte, a truncated file, bytes that do not load) is discarded with
a warning naming it and built again; a killed server leaves no build and no temporary folder
behind; partial files of killed builds are trimmed; a read-only cache, or a machine without a
C++ compiler, still uses the package it holds.

One package of a one-tree forest is built for the whole module (about 20 s); each test copies
it into a private cache. Rebuilds write the pristine bytes (the build itself is tested in
test_compile.py): what these tests check is which package is loaded, never how it is built.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import treecomp
from tests.helpers import assert_close, lowering_tolerance
from tests.test_ir import small_forest

torch_backend = pytest.importorskip("treecomp.torch_backend", reason="needs torch")


def rows() -> np.ndarray:
    """Rows on both sides of both splits, missing values and a value on the threshold."""
    rng = np.random.default_rng(0)
    X = np.stack([rng.normal(0.5, 1, 300), rng.integers(-1, 5, 300)], axis=1)
    X[::7] = np.nan
    X[::11, 0] = 0.5
    return X


def check_answers(cm: Any) -> None:
    forest = small_forest()
    expected = treecomp.convert(forest, "numpy").predict(rows())
    assert_close(cm.predict(rows()), expected, lowering_tolerance(forest))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package of ``small_forest()``, built once for the module."""
    cache = tmp_path_factory.mktemp("built")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCHINDUCTOR_CACHE_DIR", str(cache))
        treecomp.convert(small_forest(), "torch", compile=True)
    (package,) = (cache / "treecomp_packages").glob("*.pt2")
    return package


@pytest.fixture
def cached(built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private package cache holding the built package: its path there."""
    directory = tmp_path / "cache" / "treecomp_packages"
    directory.mkdir(parents=True)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cache"))
    return Path(shutil.copy2(built, directory))


@pytest.fixture
def builds(built: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Where packages were built: each build writes the pristine package."""
    paths: list[Path] = []

    def export_package(module: Any, path: Any, outputs: str, device: Any, **_: Any) -> None:
        paths.append(Path(path))
        shutil.copyfile(built, path)

    monkeypatch.setattr(torch_backend, "export_package", export_package)
    return paths


def flip_a_byte(path: Path) -> Path:
    """One bit flipped inside the compiled library, whose CRC AOTInductor does not check:
    loaded, such a package answers wrong where the bit holds a constant, or crashes."""
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x10
    path.write_bytes(bytes(data))
    return path


def truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def unloadable(path: Path) -> Path:
    """Bytes that match the digest in their name but are no package."""
    junk = b"not a package " * 100
    path.unlink()
    key = path.name.partition("-")[0]
    named = path.with_name(torch_backend.package_name(key, hashlib.sha256(junk).hexdigest()))
    named.write_bytes(junk)
    return named


DAMAGES = {
    "flipped byte": (flip_a_byte, "is corrupt"),
    "truncated": (truncate, "is corrupt"),
    "unloadable": (unloadable, "does not load"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_package_is_built_again_never_loaded(
    damage: str, cached: Path, builds: list[Path]
) -> None:
    pristine = cached.read_bytes()
    spoil, problem = DAMAGES[damage]
    damaged = spoil(cached)
    message = rf"package {re.escape(str(damaged))} {problem}.*deleted it; it is built again"
    with pytest.warns(RuntimeWarning, match=message):
        cm = treecomp.convert(small_forest(), "torch", compile=True)
    assert len(builds) == 1
    (package,) = cached.parent.glob("*.pt2")  # the damaged one deleted, no partial left
    assert package.read_bytes() == pristine
    assert package.name == cached.name  # named by its digest
    check_answers(cm)


def test_the_default_backend_never_tiers_up_to_a_damaged_package(
    cached: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The compiled tier's lookup discards the damaged package; its build replaces it."""
    from treecomp import compiled_tier

    monkeypatch.setattr(compiled_tier, "MIN_COMPILED_LEVELS", 1)
    monkeypatch.setattr(compiled_tier, "COMPILED_FROM_ROWS", 50)
    pristine = cached.read_bytes()
    built: list[bool] = []

    def build(self: Any) -> None:  # the build process, without its 20 s
        built.append(True)
        cached.write_bytes(pristine)

    monkeypatch.setattr(compiled_tier.CompiledTier, "_build", build)
    flip_a_byte(cached)
    cm = treecomp.convert(small_forest())
    with pytest.warns(RuntimeWarning, match=rf"{re.escape(str(cached))} is corrupt"):
        assert cm.tier_up(120), cm.strategy
    assert built == [True]
    assert cm.strategy.endswith("[compiled]")
    check_answers(cm)


def test_another_models_package_is_built_again_never_loaded(
    cached: Path, builds: list[Path]
) -> None:
    """Sound bytes of another model's package under this model's key (a copied or shared
    cache; here every build writes small_forest()'s package) are discarded: the key a package
    was built for is in its metadata."""
    other = small_forest(base_score=np.array([1.5]))  # another model: another key
    treecomp.convert(other, "torch", compile=True)  # its package: small_forest()'s bytes
    assert len(builds) == 1
    with pytest.warns(RuntimeWarning, match="was built for another model.*built again"):
        treecomp.convert(other, "torch", compile=True)
    assert len(builds) == 2


def test_a_package_that_is_sound_is_used_as_it_is(cached: Path, builds: list[Path]) -> None:
    cm = treecomp.convert(small_forest(), "torch", compile=True)
    assert builds == []
    check_answers(cm)


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, ended but not yet reaped by init, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def _group(pgid: int) -> list[int]:
    """The running processes of process group ``pgid`` (Linux; elsewhere its leader)."""
    if not Path("/proc/self/stat").exists():
        return [pgid] if _running(pgid) else []
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # ended meanwhile
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


PARENT = textwrap.dedent(
    """
    import sys, time
    import treecomp
    from strategies import lower_forest
    from treecomp import compiled_tier, torch_backend
    from tests.test_ir import small_forest

    forest = small_forest()
    tier = torch_backend.package_tier(forest, lower_forest, precision="float32", options={})
    tier.state = "missing"  # not in the cache: build it
    tier._start("building", tier._build_and_load, after="missing")
    while not compiled_tier._children:
        time.sleep(0.05)
    print("child", compiled_tier._children[0].pid, flush=True)
    time.sleep(600)
    """
)


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL and SIGTERM are POSIX signals")
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_server_leaves_no_build_behind(tmp_path: Path, signum: int) -> None:
    """Killed outright (SIGKILL), or by SIGTERM without a handler (Docker, Kubernetes), a
    process runs no atexit: its build ends anyway, compilers included, and leaves no
    temporary folder. SIGKILL comes once the build compiles, SIGTERM while it starts."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {
        **os.environ,
        "TMPDIR": str(temp),
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache"),
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
    }
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT],
        env=env,
        cwd=Path(__file__).parent.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        assert line.startswith("child "), line
        child = int(line.split()[1])
        deadline = time.monotonic() + 120
        if signum == signal.SIGKILL:  # a compiler (or compile worker) running beside it
            while len(_group(child)) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert len(_group(child)) >= 2, "the build started no compiler"
        else:
            time.sleep(1.0)
        parent.send_signal(signum)
        parent.wait(30)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
    deadline = time.monotonic() + 30
    while _group(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _group(child) == []
    left = sorted(p.name for p in temp.iterdir() if not p.name.startswith("torchinductor_"))
    assert left == []  # no treecomp-build-* folder, no compiler's temporary file
    assert not list((tmp_path / "cache").glob("treecomp_packages/*"))


def test_partial_packages_of_killed_builds_are_trimmed(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()  # a pid that no process has now
    now = time.time()
    files = {
        f"a.{dead.pid}.1.partial.pt2": now - 2 * torch_backend.PARTIAL_GRACE_S,  # writer dead
        f"b.{os.getpid()}.1.partial.pt2": now - 2 * torch_backend.STALE_PARTIAL_S,  # too old
        f"c.{dead.pid}.partial.pt2": now - 2 * torch_backend.PARTIAL_GRACE_S,  # older name
        f"d.{os.getpid()}.1.partial.pt2": now - 2 * torch_backend.PARTIAL_GRACE_S,  # writing
        # Its pid may live in another container sharing the cache: given time to finish.
        f"e.{dead.pid}.1.partial.pt2": now - torch_backend.PARTIAL_GRACE_S / 2,
        "f-0.pt2": now - 2 * torch_backend.STALE_PARTIAL_S,  # a package: kept (under limit)
    }
    for name, modified in files.items():
        path = tmp_path / name
        path.write_bytes(b"x" * 100)
        os.utime(path, (modified, modified))
    torch_backend.trim_packages(tmp_path, keep=tmp_path / "f-0.pt2")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == [f"d.{os.getpid()}.1.partial.pt2", f"e.{dead.pid}.1.partial.pt2", "f-0.pt2"]


READ_ONLY = textwrap.dedent(
    """
    import errno, os, sys

    cache = os.path.realpath(os.environ["TORCHINDUCTOR_CACHE_DIR"])
    WRITES = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def read_only(event, args):  # every write under the cache fails, as on a read-only mount
        if event == "open":
            path, mode, flags = args
            if not flags & WRITES:
                return
        elif event in ("os.mkdir", "os.utime", "os.remove", "os.rmdir", "os.chmod",
                       "os.truncate", "os.symlink", "os.link"):
            path = args[0]
        elif event == "os.rename":  # os.rename and os.replace: either end
            path = args[0]
            check(args[1])
        else:
            return
        check(path)

    def check(path):
        if isinstance(path, (str, bytes, os.PathLike)):
            full = os.path.realpath(os.fsdecode(path))
            if full == cache or full.startswith(cache + os.sep):
                raise OSError(errno.EROFS, "Read-only file system", os.fsdecode(path))

    sys.addaudithook(read_only)
    """
)
CONVERT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import treecomp
    from tests.test_ir import small_forest

    cm = treecomp.convert(small_forest(), "torch", compile=True)
    np.save(sys.argv[1], cm.predict(np.load(sys.argv[2])))
    """
)


def convert_in_a_new_process(tmp_path: Path, preamble: str = "", **env: str) -> None:
    """``convert(small_forest(), "torch", compile=True)`` in a new process (no state of
    this one: inductor caches what it probed), after ``preamble``; check its answers."""
    inputs, outputs = tmp_path / "rows.npy", tmp_path / "out.npy"
    np.save(inputs, rows())
    done = subprocess.run(
        [sys.executable, "-c", preamble + CONVERT, str(outputs), str(inputs)],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), **env},
        cwd=Path(__file__).parent.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    forest = small_forest()
    expected = treecomp.convert(forest, "numpy").predict(rows())
    assert_close(np.load(outputs), expected, lowering_tolerance(forest))


def test_a_read_only_cache_holding_the_package_is_used(cached: Path, tmp_path: Path) -> None:
    """Loading writes nothing under the cache (AOTInductor's own load probed the CPU by
    compiling into it, and a load refreshes the package's time only where it can)."""
    before = cached.stat().st_mtime_ns
    convert_in_a_new_process(tmp_path, READ_ONLY)
    assert cached.stat().st_mtime_ns == before
    assert sorted(p.name for p in cached.parent.iterdir()) == [cached.name]


def test_a_cached_package_needs_no_compiler(cached: Path, tmp_path: Path) -> None:
    """Only building a package needs the compiler (it was checked before the cache was
    looked at)."""
    import torch._inductor.config as inductor_config

    convert_in_a_new_process(tmp_path, CXX="/nonexistent/c++")
    cached.unlink()  # not cached: now the compiler is needed, and missing
    with (
        inductor_config.patch({"cpp.cxx": (None, "/nonexistent/c++")}),
        pytest.raises(torch_backend.CompilerNotFoundError, match=r"needs a C\+\+ compiler"),
    ):
        treecomp.convert(small_forest(), "torch", compile=True)
