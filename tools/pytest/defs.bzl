"""py_pytest: a pytest module as a py_test in one short stanza."""

def py_pytest(name, srcs, deps = [], data = [], args = [], **kwargs):
    """A py_test that runs `srcs` through pytest.

    Args:
      name: the test target's name, by convention `<module>_test`.
      srcs: the test module(s).
      deps: libraries under test and their pip dependencies.
      data: runtime files.
      args: extra pytest arguments.
      **kwargs: passed to py_test (size, tags, target_compatible_with, ...).
    """
    native.py_test(
        name = name,
        srcs = srcs + ["//tools/pytest:pytest_main.py"],
        main = "//tools/pytest:pytest_main.py",
        args = args + ["$(rootpath %s)" % s for s in srcs],
        deps = deps + ["@pip//:pytest"],
        data = data,
        python_version = "PY3",
        **kwargs
    )
