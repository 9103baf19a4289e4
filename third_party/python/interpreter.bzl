"""The pinned Python 3.11 toolchain.

A repository rule finds python3.11 on PATH (or $PYTHON_BIN), resolves pyenv-style shims to the
real binary, refuses anything that is not 3.11, and registers a py_runtime_pair for it.

How the interpreter's identity reaches the cache keys of Python actions: the rule computes it
(full version, real path, sha256 of the binary and of libpython when it is shared), writes it to
`interpreter_identity.txt`, and makes the toolchain's `interpreter` a two-line wrapper script
`python3` whose comments carry that identity and which execs the real binary. Bazel puts the
runtime's interpreter into the runfiles of every py_binary and py_test, so the wrapper's digest is
an input of every test action and of every build action that runs a Python tool. A 3.11.2 and a 3.11.7 machine therefore compute different action
keys, and a remote cache can never hand one's result to the other.

Interpreter drift: a package manager can replace the pinned binary (`brew upgrade python@3.11`
installs 3.11.x+1 in a new Cellar directory and deletes the old one; apt upgrades in place). The
rule is `local`, so Bazel re-runs it (a probe of well under a second) at every server start, and
re-pins to what python3.11 is then; `configure` makes `bazel sync --configure` do it at once; PATH
and PYTHON_BIN changes do it too. A new identity means new action keys, as above; the same one
leaves every key and the installed packages as they were (@pip's marker records the content of
interpreter_path.txt, not its mtime). Within one server the old pin stays: the wrapper then fails
with one message naming the vanished path and the command that re-pins. For that message to be
reached, py_binary stubs start by the stable path (Homebrew's symlink, which survives the
upgrade) when there is one, else by the real path.
"""

_FIX = {
    "mac": (
        "Install Python 3.11 with Homebrew (`brew install python@3.11`) or point PYTHON_BIN at a " +
        "Python 3.11 interpreter, e.g. `PYTHON_BIN=/opt/homebrew/bin/python3.11 ./bazelw test //...`."
    ),
    "other": (
        "Install Python 3.11 (Debian/Ubuntu: `sudo apt-get install python3.11 python3.11-venv python3-pip`, " +
        "or simply run ./bazelw, which does it) or point PYTHON_BIN at a Python 3.11 interpreter, " +
        "e.g. `PYTHON_BIN=/usr/bin/python3.11 ./bazelw test //...`."
    ),
}

def is_macos(rctx):
    return rctx.os.name.lower().startswith("mac")

def setup_fix(rctx):
    """How to install Python 3.11 on this machine: Homebrew on macOS, apt-get elsewhere."""
    return _FIX["mac" if is_macos(rctx) else "other"]

def _find_interpreter(rctx):
    fix = setup_fix(rctx)
    requested = rctx.os.environ.get("PYTHON_BIN", "")
    if requested:
        if "/" in requested:
            path = rctx.path(requested)
            if not path.exists:
                fail("PYTHON_BIN=%s does not exist. %s" % (requested, fix))
            return str(path), "PYTHON_BIN=%s" % requested
        found = rctx.which(requested)
        if not found:
            fail("PYTHON_BIN=%s is not on PATH. %s" % (requested, fix))
        return str(found), "PYTHON_BIN=%s" % requested
    found = rctx.which("python3.11")
    if not found:
        fail("python3.11 was not found on PATH. %s" % fix)
    return str(found), "python3.11 on PATH (%s)" % found

def _python_interpreter_impl(rctx):
    candidate, origin = _find_interpreter(rctx)
    probe = rctx.path(Label("//third_party/python:probe_interpreter.py"))
    result = rctx.execute([candidate, "-S", "-E", str(probe), candidate])
    if result.return_code != 0:
        fail("%s could not be run as Python (exit %d): %s %s. %s" % (
            origin,
            result.return_code,
            result.stdout,
            result.stderr,
            setup_fix(rctx),
        ))
    info = json.decode(result.stdout)
    if info["major_minor"] != "3.11":
        fail("%s is Python %s (%s); this workspace is pinned to Python 3.11. %s" % (
            origin,
            info["version"],
            info["executable"],
            setup_fix(rctx),
        ))
    real = info["executable"]
    rctx.file("interpreter_path.txt", real + "\n")
    identity = "\n".join([
        "version=" + info["version"],
        "implementation=" + info["implementation"],
        "executable=" + real,
        "executable_sha256=" + info["executable_sha256"],
        "libpython_sha256=" + info["libpython_sha256"],
    ]) + "\n"
    rctx.file("interpreter_identity.txt", identity)

    # The in-build interpreter is this wrapper. Its text carries the identity, so its digest (an
    # input of every Python action) changes whenever the real interpreter does.
    # When the pinned binary is gone (an upgrade within one Bazel server's life), it says which
    # and how to re-pin, instead of the shell's "not found".
    rctx.file("python3", "#!/bin/sh\n" + "".join(["# %s\n" % line for line in identity.splitlines()]) +
              'if [ ! -x "{real}" ]; then\n'.format(real = real) +
              '  echo "@python311: the pinned interpreter {real} no longer exists (upgraded or removed). '.format(real = real) +
              'Re-pin python3.11 with: ./bazelw sync --configure" >&2\n' +
              "  exit 2\n" +
              "fi\n" +
              'exec "%s" "$@"\n' % real, executable = True)
    rctx.file("BUILD.bazel", """\
# Generated by //third_party/python:interpreter.bzl from {origin}.
load("@bazel_tools//tools/python:toolchain.bzl", "py_runtime_pair")

exports_files(["interpreter_path.txt", "interpreter_identity.txt"])

py_runtime(
    name = "runtime",
    interpreter = "python3",
    python_version = "PY3",
    stub_shebang = "#!{stable}",
)

py_runtime_pair(
    name = "runtime_pair",
    py3_runtime = ":runtime",
)

toolchain(
    name = "toolchain",
    toolchain = ":runtime_pair",
    toolchain_type = "@bazel_tools//tools/python:toolchain_type",
)
""".format(origin = origin, stable = info["stable_path"]))

python_interpreter = repository_rule(
    implementation = _python_interpreter_impl,
    environ = ["PYTHON_BIN", "PATH"],
    configure = True,
    local = True,
    doc = "Finds python3.11 (or $PYTHON_BIN) and defines a py_runtime_pair toolchain for it.",
)
