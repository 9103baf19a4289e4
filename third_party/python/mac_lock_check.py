"""Checks that the lock installs on a Mac (Apple silicon, CPython 3.11), from this Linux machine.

    python3.11 third_party/python/mac_lock_check.py [requirements_lock.txt]

Every locked distribution but the ones built from source (SOURCE_BUILDS) must have a macOS arm64
cp311 wheel whose sha256 is in the lock: `pip download --platform macosx_14_0_arm64
--require-hashes --only-binary=:all:` of the whole lock into a temporary directory (deleted after)
must succeed. When it fails, each distribution is tried alone and every one without a Mac wheel or
hash is named. The source builds must be in the lock with the hash of their sdist. Prints the
oldest macOS the downloaded wheels allow (the highest macosx_X_Y tag any of them needs), which is
what docs/mac.md quotes. Needs the package index; run by .ci/run, not by
`bazel test`. Exit status: 0 when the lock is complete for a Mac, 1 when it is not, 2 for a bad
lock path.
"""

import itertools
import pathlib
import re
import subprocess
import sys
import tempfile

LOCK = pathlib.Path(__file__).with_name("requirements_lock.txt")
MACOS = "macosx_14_0_arm64"
TARGET = ["--platform", MACOS, "--python-version", "3.11", "--implementation", "cp",
          "--abi", "cp311", "--abi", "abi3", "--abi", "none"]  # fmt: skip
PIP = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes",
       "--disable-pip-version-check", "--no-input", "--quiet"]  # fmt: skip

# Locked distributions that have no wheels and are built from their sdist on every machine, with
# how that build runs on a Mac (WORKSPACE sets it up).
SOURCE_BUILDS = {
    "llama-cpp-python": (
        "compiled by pip inside @pip_llama_cpp, set up by WORKSPACE (-DGGML_NATIVE=OFF) and "
        "llama_cpp_minimal.cmake: ggml's CPU backend only, as on Linux, with Metal, BLAS and "
        "Accelerate, which a Mac build turns on by default, off; needs the Xcode command line "
        "tools (clang); pip fetches cmake when the machine has none (scikit-build-core asks for it)"
    ),
}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_entries(text: str) -> dict[str, str]:
    """{normalized name: its `name==version \\` line and hash lines} of a hash-locked file."""
    entries, name = {}, None
    for line in text.splitlines():
        if name is None:
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            name = normalize(line.split("==")[0].strip())
            entries[name] = line
        else:
            entries[name] += "\n" + line
        if not line.rstrip().endswith("\\"):
            name = None
    return entries


def pin(entry: str) -> str:
    return entry.splitlines()[0].rstrip(" \\")


_RUNS = itertools.count()


def download(entries: list[str], work: pathlib.Path, extra: list[str]):
    """pip download of these lock entries into a fresh directory under work: (pip's answer, the directory)."""
    index = next(_RUNS)
    requirements = work / f"requirements-{index}.txt"
    requirements.write_text("\n".join(entries) + "\n")
    dest = work / f"files-{index}"
    command = [*PIP, *extra, "-d", str(dest), "-r", str(requirements)]
    return subprocess.run(command, capture_output=True, text=True), dest


def oldest_macos(wheels: list[pathlib.Path]) -> tuple[tuple[int, int], str]:
    """The oldest macOS every wheel runs on, and the wheel that sets it."""
    oldest, by = (0, 0), "no wheel needs a particular version"
    for wheel in wheels:
        platforms = wheel.name[: -len(".whl")].split("-")[-1].split(".")
        matches = [re.match(r"macosx_(\d+)_(\d+)_", p) for p in platforms]
        versions = [(int(m[1]), int(m[2])) for m in matches if m]
        if versions and min(versions) > oldest:
            oldest, by = min(versions), wheel.name
    return oldest, by


def last_error(process: subprocess.CompletedProcess) -> str:
    """pip's reason, in one line: the hashes when they disagree, else its last line."""
    lines = [line.strip() for line in process.stderr.splitlines() if line.strip()]
    expected = [line.split()[-1] for line in lines if line.startswith("Expected sha256")]
    got = [line.split()[-1] for line in lines if line.startswith("Got")]
    if expected and got:
        return f"its Mac wheel has sha256 {got[-1]}, the lock has {', '.join(expected)}"
    return lines[-1] if lines else f"pip exited {process.returncode}"


def complain(*lines: str) -> None:
    print("\n".join(lines), file=sys.stderr)


def main(argv: list[str]) -> int:
    lock = pathlib.Path(argv[1]) if len(argv) > 1 else LOCK
    if not lock.is_file():
        complain(f"mac_lock_check: no lock at {lock}; pass the path of a hash-locked requirements file")
        return 2
    entries = lock_entries(lock.read_text())
    sources = {normalize(name): how for name, how in SOURCE_BUILDS.items()}
    stale = sorted(set(sources) - set(entries))
    if stale:
        complain(f"mac_lock_check: SOURCE_BUILDS names {', '.join(stale)}, not in {lock}; update the list")
        return 1
    wheels = [entries[n] for n in sorted(entries) if n not in sources]
    with tempfile.TemporaryDirectory(prefix="mac-lock-") as tmp:
        work = pathlib.Path(tmp)
        done, dest = download(wheels, work, ["--only-binary=:all:", *TARGET])
        if done.returncode != 0:
            failed = []
            for entry in wheels:
                alone, _ = download([entry], work, ["--only-binary=:all:", *TARGET])
                if alone.returncode != 0:
                    failed.append(f"  {pin(entry)}: {last_error(alone)}")
            complain(
                f"mac_lock_check: {len(failed)} locked distribution(s) have no {MACOS} cp311 wheel "
                f"whose sha256 is in {lock.name}:",
                *(failed or [f"  (each resolves alone; together pip said: {last_error(done)})"]),
                "Regenerate the lock with third_party/python/lock.sh (it adds the macOS arm64 hashes), "
                "or list a distribution built from source in SOURCE_BUILDS with how a Mac builds it.",
            )
            return 1
        files = sorted(dest.glob("*.whl"))
        print(
            f"mac_lock_check: {len(files)} of {len(wheels)} locked wheels resolve for {MACOS} cp311, "
            "hashes checked"
        )
        for name, how in sorted(sources.items()):
            done, _ = download([entries[name]], work, ["--no-binary=:all:"])
            if done.returncode != 0:
                complain(
                    f"mac_lock_check: no sdist of {pin(entries[name])} with its locked hash: "
                    + last_error(done)
                )
                return 1
            print(f"mac_lock_check: built from source on a Mac: {pin(entries[name])} ({how})")
        (major, minor), by = oldest_macos(files)
        print(f"mac_lock_check: the locked wheels need macOS {major}.{minor} or newer (set by {by})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
