"""AOTInductor compile of a saved torch.export program into a byte-reproducible package (a child process).

    python -m conversion.aoti_compile --program=decode_program.pt2 --out=decoder.pt2 \\
        --build_info=build.json --threads=1 --isa=avx2

conversion/aoti_decoder.py runs this in a child process (compile_package), because Inductor's C++
build needs what Bazel's runfiles cannot hold: torch's C++ headers (the pip repository's BUILD
leaves them out of torch's runfiles) and setuptools' data file "Lorem ipsum.txt" (a space in its
name; torch.utils.cpp_extension imports setuptools). The child imports torch from the pip
repository's directory itself, the same locked distributions the parent's runfiles link to, so the
action's inputs (torch's files) still decide the result.

What is pinned, and why (docs/architecture.md, "The AOTInductor decoder"):
  - the vector ISA and the thread count baked into the kernels (--isa, --threads): Inductor would
    otherwise pick them from the build machine (-march=native, torch.get_num_threads());
  - the compile cache: a fresh directory inside this process's own temporary directory
    (TORCHINDUCTOR_CACHE_DIR, set by the parent), never the shared /tmp/torchinductor_<user>, and
    no precompiled header (Inductor keeps those outside the cache directory);
  - absolute paths: the cache directory and torch's directory differ between checkouts, Bazel
    output bases and sandboxes. The compiler runs through a wrapper adding -ffile-prefix-map for
    both, no line tables are emitted, the generated files get fixed names instead of hashes of
    their paths, and the same prefixes, with the interpreter's include and library directories,
    are rewritten in the package's text files (the compile commands Inductor appends as
    comments). The .so is then searched for these paths (the library directory aside): a path
    that got through is an error, not a silently irreproducible file;
  - the archive: records sorted, a serialization id derived from them (conversion/pt2_files.py).
"""

import json
import os
import platform
import shutil
import stat
import subprocess

from absl import flags

from common import atomic, cli
from common.errors import InputError

flags.DEFINE_string("program", None, "torch.export program (torch.export.save) to compile (required).")
flags.DEFINE_string("out", None, "Output AOTInductor package (.pt2) (required).")
flags.DEFINE_string("build_info", None, "Output JSON: what the compile pinned (required).")
flags.DEFINE_integer("threads", 1, "Threads the kernels are generated for.")
flags.DEFINE_string("isa", "avx2", "Vector ISA of the kernels: one of " + ", ".join(sorted(["avx2"])) + ".")
FLAGS = flags.FLAGS

# Vector ISA -> (Inductor's SIMD width in bits, the -march that allows exactly what it emits).
# x86-64-v3 is the psABI level of AVX2 (with FMA, F16C, BMI2): the kernels run on any such CPU.
ISAS = {"avx2": (256, "x86-64-v3")}
MODEL_FILES = "decoder"  # the generated files' fixed name (Inductor's default is a hash of paths)
# What each absolute prefix becomes: the compile cache, torch's site directory, Python's headers.
PREFIXES = {
    "cache": "/aoti",
    "torch": "/torch-site",
    "python": "/python-include",
    "python_lib": "/python-lib",
}
TEXT_SUFFIXES = (".cpp", ".json", ".h")


def _compiler() -> tuple[str, str]:
    """(the C++ compiler's path, its --version first line); InputError without one."""
    name = os.environ.get("CXX", "g++")
    path = shutil.which(name)
    if path is None:
        raise InputError(f"no C++ compiler: {name} is not on PATH; install g++ or set CXX")
    version = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
    return path, (version.stdout.splitlines() or ["unknown"])[0]


def _prefix_maps(cache_dir: str, torch_site: str) -> dict[str, str]:
    """Absolute prefix -> its fixed stand-in; the real and the symlink-resolved spelling of each."""
    import sysconfig

    maps = {}
    paths = [("cache", cache_dir), ("torch", torch_site), ("python", sysconfig.get_paths()["include"])]
    # The interpreter's library directory is on the link line Inductor writes into the .cpp files
    # (a pyenv install under the user's home, say): the package's bytes would name the machine.
    if sysconfig.get_config_var("LIBDIR"):
        paths.append(("python_lib", sysconfig.get_config_var("LIBDIR")))
    for key, path in paths:
        for spelling in {os.path.abspath(path), os.path.realpath(path)}:
            maps[spelling] = PREFIXES[key]
    # Longest first: a prefix inside another is replaced before the one holding it.
    return dict(sorted(maps.items(), key=lambda item: -len(item[0])))


def _compiler_wrapper(directory: str, compiler: str, maps: dict[str, str]) -> str:
    """A `g++` in `directory` that runs the compiler with -ffile-prefix-map for every prefix. Named
    g++ because Inductor picks gcc's flags by the compiler's name."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "g++")
    options = " ".join(f"'-ffile-prefix-map={old}={new}'" for old, new in maps.items())
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(f"#!/bin/sh\nexec '{compiler}' {options} \"$@\"\n")
    os.chmod(path, stat.S_IRWXU)
    return path


def inductor_options(threads: int, isa: str, compiler: str) -> dict:
    """The Inductor settings the package is compiled with (the module docstring says why each)."""
    simdlen, march = ISAS[isa]
    return {
        "cpp.threads": threads,
        "cpp.simdlen": simdlen,
        "cpp.march": march,
        "cpp.cxx": (compiler,),
        "aot_inductor.enable_line_tables": False,
        "aot_inductor.precompile_headers": False,
        "aot_inductor.model_name_for_generated_files": MODEL_FILES,
        # Matrix products through Inductor's C++ GEMM template, not ATen's mm: a decode step's
        # products are one row each, where the call into ATen and BLAS costs about as much as the
        # arithmetic (13% less time per step, measured). With the template as the only backend each
        # product has one candidate, so nothing is benchmarked: the choice cannot depend on the
        # build machine's load (//conversion:aoti_decoder_test's compile gives the export stage's
        # bytes).
        "max_autotune": True,
        "max_autotune_gemm_backends": "CPP",
        # The ISA is pinned above, so Inductor's check that it works on the build machine (a C++
        # build of a test program and a Python process to load it, ~2.7 s of a ~28 s compile) can
        # decide nothing we want: skipped. Inductor still takes its ISA list from the machine's CPU
        # flags; a compiler that cannot build AVX2 code now fails the compile instead of making it
        # silently scalar. The package's bytes are unchanged.
        "cpp.vec_isa_ok": True,
    }


def _compile_each_template_once() -> None:
    """Inductor compiles a kernel template's Jinja source afresh every time it renders one (for the
    default student's matrix products: 323 compiles, ~2.4 s of CPU of a ~28 s compile); compile
    each source once. The same templates render the same code: the package's bytes are unchanged.
    A torch without this private function compiles as it did."""
    import functools

    from torch._inductor.codegen import common

    template = getattr(common, "KernelTemplate", None)
    from_string = getattr(template, "_template_from_string", None)
    if callable(from_string):
        template._template_from_string = staticmethod(functools.cache(from_string))


def compile_program(program: str, threads: int, isa: str, cache_dir: str) -> tuple[dict[str, bytes], dict]:
    """(the package's records, with the absolute prefixes rewritten; what the compile pinned)."""
    import torch
    import torch._inductor

    from conversion import pt2_files

    torch.set_num_threads(threads)
    compiler, version = _compiler()
    torch_site = os.path.dirname(os.path.dirname(os.path.abspath(torch.__file__)))
    maps = _prefix_maps(cache_dir, torch_site)
    wrapper = _compiler_wrapper(os.path.join(cache_dir, "bin"), compiler, maps)
    _compile_each_template_once()
    exported = torch.export.load(program)
    package = os.path.join(cache_dir, "package.pt2")
    torch._inductor.aoti_compile_and_package(
        exported, package_path=package, inductor_configs=inductor_options(threads, isa, wrapper)
    )
    entries = pt2_files.records(package)
    for name, data in entries.items():
        if name.endswith(TEXT_SUFFIXES):
            text = data.decode("utf-8")
            for old, new in maps.items():
                text = text.replace(old, new)
            entries[name] = text.encode("utf-8")
        else:
            # Not the library directory: only the link line names it, and a system interpreter's
            # (/usr/lib/<triplet>) may stand in a shared object for reasons of its own.
            leaked = [
                old for old, new in maps.items() if new != PREFIXES["python_lib"] and old.encode() in data
            ]
            if leaked:
                raise InputError(
                    f"the compiled {name} holds the build path {leaked[0]}: it would differ between "
                    "builds; the prefix maps in conversion/aoti_compile.py no longer cover it"
                )
    info = {
        "isa": isa,
        "march": ISAS[isa][1],
        "threads": threads,
        "torch": torch.__version__,
        "compiler": version,
        "machine": platform.machine(),
    }
    return entries, info


def main(argv: list[str]) -> None:
    del argv
    for name in ("program", "out", "build_info"):
        cli.require_flag(FLAGS[name].value, name)
    if FLAGS.isa not in ISAS or FLAGS.threads < 1:
        raise InputError(f"--isa: one of {', '.join(sorted(ISAS))}; --threads: at least 1")
    cache_dir = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if not cache_dir or not os.path.isdir(cache_dir):
        raise InputError("TORCHINDUCTOR_CACHE_DIR: set it to a fresh directory of this compile's own")
    from conversion import pt2_files

    entries, info = compile_program(FLAGS.program, FLAGS.threads, FLAGS.isa, cache_dir)
    atomic.write_bytes(FLAGS.out, pt2_files.rewrite(entries))
    atomic.write_bytes(FLAGS.build_info, json.dumps(info, sort_keys=True).encode())


if __name__ == "__main__":
    cli.run(main)
