"""Installs the hash-locked requirements and generates one py_library per distribution.

`pip install --no-deps --require-hashes` runs inside this repository rule, the only place where
packages are downloaded. Nothing is fetched at build or run time.
"""

def _pip_install_impl(rctx):
    # Every label is resolved before the first execute: resolving one later makes Bazel restart
    # this function from the top, and the whole install (about a minute) ran twice.
    generator = rctx.path(Label("//third_party/python:generate_build.py"))
    python = rctx.read(rctx.attr.python).strip()
    lock = rctx.path(rctx.attr.lock)
    rctx.report_progress("pip install --require-hashes -r %s" % rctx.attr.lock.name)
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
            str(lock),
        ],
        environment = {
            # llama-cpp-python builds from source: portable x86-64 code, not this CPU's.
            "CMAKE_ARGS": "-DGGML_NATIVE=OFF",
            "PIP_ROOT_USER_ACTION": "ignore",
        },
        timeout = 3600,
        quiet = False,
    )
    if result.return_code != 0:
        fail("pip could not install %s (exit %d). pip said:\n%s\n%s\n" % (
            rctx.attr.lock,
            result.return_code,
            result.stderr,
            "A hash mismatch means the lock and the downloaded file disagree: regenerate the lock " +
            "with the command in third_party/python/README.md. A missing python3.11 pip means " +
            "`sudo apt-get install python3-pip python3.11-venv` (./bazelw does it).",
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

    result = rctx.execute([python, "-E", str(generator), "site", "BUILD.bazel"])
    if result.return_code != 0:
        fail("generating @%s//:BUILD.bazel failed: %s" % (rctx.name, result.stderr))

pip_install = repository_rule(
    implementation = _pip_install_impl,
    attrs = {
        "lock": attr.label(mandatory = True, allow_single_file = True),
        "python": attr.label(mandatory = True, allow_single_file = True, doc = "file holding the interpreter path"),
    },
    doc = "pip-installs a hash-locked requirements file; @<name>//:<distribution> per distribution.",
)
