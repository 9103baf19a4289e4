"""WORKSPACE splits the one lock over @pip and @pip_llama_cpp: every locked distribution lands in
exactly one of them, llama_cpp loads from its own repository, and the files generate_build.py
leaves out of the runfiles are really absent."""

import collections
import os
import re

LOCK = "third_party/python/requirements_lock.txt"
# Runfiles paths of each repository's distributions.txt (written by generate_build.py).
INSTALLED = {repo: f"../{repo}/distributions.txt" for repo in ("pip", "pip_llama_cpp")}


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def locked_names() -> set[str]:
    with open(LOCK, encoding="utf-8") as handle:
        return {
            _normalize(line.split("==")[0].strip())
            for line in handle
            if line.strip() and not line[0].isspace() and not line.startswith("#")
        }


def installed_names(repo: str) -> list[str]:
    with open(INSTALLED[repo], encoding="utf-8") as handle:
        return handle.read().split()


def test_every_locked_distribution_is_installed_exactly_once():
    counts = collections.Counter(name for repo in INSTALLED for name in installed_names(repo))
    assert set(counts) == locked_names()
    assert [name for name, count in counts.items() if count > 1] == []
    assert installed_names("pip_llama_cpp") == ["llama_cpp_python"]


def test_llama_cpp_loads_from_its_own_repository():
    import llama_cpp

    package = os.path.dirname(llama_cpp.__file__)
    assert package.endswith(os.path.join("pip_llama_cpp", "site", "llama_cpp")), package
    assert llama_cpp.llama_print_system_info()  # the shared library is loaded and answers


def test_files_left_out_of_the_runfiles_are_absent():
    import numpy
    import torch

    torch_dir = os.path.dirname(torch.__file__)
    assert os.path.isdir(os.path.join(torch_dir, "nn"))
    assert not os.path.exists(os.path.join(torch_dir, "include"))
    assert not os.path.exists(os.path.join(os.path.dirname(numpy.__file__), "_core", "tests"))
