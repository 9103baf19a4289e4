"""Installs the hash-locked requirements and generates one py_library per distribution.

`pip install --no-deps --require-hashes` runs inside this repository rule, the only place where
packages are downloaded. Nothing is fetched at build or run time.
"""

load(":interpreter.bzl", "is_macos")

# How to get pip for python3.11: Homebrew on macOS, apt-get elsewhere.
_PIP_FIX = {
    "mac": "`brew reinstall python@3.11` (Homebrew's Python 3.11 comes with pip).",
    "other": "`sudo apt-get install python3-pip python3.11-venv` (./bazelw does it).",
}

def _normalize(name):
    return name.lower().replace("-", "_").replace(".", "_")

def _lock_entries(text):
    """{normalized name: entry text} of a hash-locked requirements file: each entry is a
    `name==version \\` line followed by its `--hash=...` continuation lines."""
    entries = {}
    name = None
    for line in text.splitlines():
        if name == None:
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            name = _normalize(line.split("==")[0].strip())
            entries[name] = line
        else:
            entries[name] += "\n" + line
        if not line.rstrip().endswith("\\"):
            name = None
    return entries

def _select(rctx, entries):
    """The names this repository installs: `only` if given, else every entry but `exclude`."""
    unknown = [n for n in rctx.attr.only + rctx.attr.exclude if _normalize(n) not in entries]
    if unknown:
        fail("@%s: %s not in %s; `only` and `exclude` name distributions of the lock." % (
            rctx.name,
            ", ".join(unknown),
            rctx.attr.lock,
        ))
    if rctx.attr.only:
        return sorted([_normalize(n) for n in rctx.attr.only])
    skipped = [_normalize(n) for n in rctx.attr.exclude]
    return [n for n in sorted(entries) if n not in skipped]

def _pip_install_impl(rctx):
    # Every label is resolved before the first execute: resolving one later makes Bazel restart
    # this function from the top, and the whole install (about a minute) ran twice.
    generator = rctx.path(Label("//third_party/python:generate_build.py"))
    python = rctx.read(rctx.attr.python).strip()
    environment = dict(rctx.attr.environment)
    if rctx.attr.cmake_project_include:
        include = rctx.path(rctx.attr.cmake_project_include)
        environment["CMAKE_ARGS"] = " ".join([
            environment.get("CMAKE_ARGS", ""),
            "-DCMAKE_PROJECT_INCLUDE=%s" % include,
        ]).strip()
    environment["PIP_ROOT_USER_ACTION"] = "ignore"
    entries = _lock_entries(rctx.read(rctx.attr.lock))
    names = _select(rctx, entries)
    rctx.file("requirements.txt", "\n".join([entries[n] for n in names]) + "\n")
    rctx.report_progress("pip install --require-hashes: %d distributions of %s" % (
        len(names),
        rctx.attr.lock.name,
    ))
    result = rctx.execute(
        [
            python,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--require-hashes",
            # pip's .pyc files embed timestamps and absolute paths; we compile our own below.
            "--no-compile",
            "--disable-pip-version-check",
            "--no-input",
            "--quiet",
            "--target",
            "site",
            "-r",
            "requirements.txt",
        ],
        environment = environment,
        timeout = 3600,
        # pip's output is printed when it fails (below). On success it held only warnings about
        # the machine's own pip configuration (an index directory that does not exist: one line
        # per package, 60 lines of a newcomer's first run), nothing about this install.
        quiet = True,
    )
    if result.return_code != 0:
        fail("pip could not install %s (exit %d). pip said:\n%s\n%s\n" % (
            rctx.attr.lock,
            result.return_code,
            result.stderr,
            "A hash mismatch means the lock and the downloaded file disagree: regenerate the lock " +
            "with the command in third_party/python/README.md. A missing python3.11 pip means " +
            _PIP_FIX["mac" if is_macos(rctx) else "other"],
        ))

    # Byte-compile once here instead of in every test (importing torch + coremltools drops from
    # ~10 s to ~6 s). unchecked-hash pycs carry no timestamps, -s strips this machine's path from
    # co_filename (tracebacks still find sources via sys.path) and a fixed hash seed fixes the
    # order of frozenset constants: the same lock gives byte-identical pycs on every machine, so
    # they do not break remote cache hits. Files that fail to compile simply stay uncompiled.
    site = rctx.path("site")
    rctx.report_progress("byte-compiling the installed packages")
    rctx.execute(
        [python, "-m", "compileall", "-q", "-j", "2", "--invalidation-mode", "unchecked-hash",
         "-s", str(site) + "/", str(site)],
        environment = {"PYTHONHASHSEED": "0"},
        timeout = 1800,
    )

    result = rctx.execute([python, "-E", str(generator), "site", "BUILD.bazel", rctx.attr.deps_repo])
    if result.return_code != 0:
        fail("generating @%s//:BUILD.bazel failed: %s" % (rctx.name, result.stderr))

pip_install = repository_rule(
    implementation = _pip_install_impl,
    attrs = {
        "lock": attr.label(mandatory = True, allow_single_file = True),
        "python": attr.label(mandatory = True, allow_single_file = True, doc = "file holding the interpreter path"),
        "only": attr.string_list(doc = "install just these locked distributions"),
        "exclude": attr.string_list(doc = "install every locked distribution but these"),
        "deps_repo": attr.string(
            doc = "where dependencies that this repository does not install live (@<deps_repo>//:<name>)",
        ),
        "environment": attr.string_dict(doc = "environment of pip, and so of source builds"),
        "cmake_project_include": attr.label(
            allow_single_file = True,
            doc = "a CMake file that source builds include after every project() (CMAKE_PROJECT_INCLUDE)",
        ),
    },
    doc = "pip-installs a hash-locked requirements file; @<name>//:<distribution> per distribution.",
)
