"""layering on planted imports and tables, and on the real table in docs/architecture.md."""

import pytest

from tools.lint import layering

TABLE = """# Architecture

## Package layering

| package | its code may import | its tests may also import |
| --- | --- | --- |
| `common` | | |
| `data` | `common` | |
| `conversion` | `common`, `data` | `verify` |
| `verify` | `common`, `data`, `conversion` | |
| `pipeline` | `common`, `data`, `conversion`, `verify` | |

## Next section

| package | x | y |
| --- | --- | --- |
| `data` | `pipeline` | |
"""
RULES = layering.read_rules(TABLE)


def problems(files: dict[str, str]) -> list[str]:
    return [str(p) for p in layering.check(RULES, files)]


def test_the_table_is_read_from_its_own_section_only():
    assert RULES["data"] == (frozenset({"common"}), frozenset())
    assert RULES["conversion"] == (frozenset({"common", "data"}), frozenset({"verify"}))
    assert sorted(RULES) == ["common", "conversion", "data", "pipeline", "verify"]


def test_allowed_imports_pass():
    files = {
        "data/x.py": "from common import atomic\nimport data.y\nimport numpy\nfrom . import z\n",
        "conversion/x_test.py": "from verify import fixtures\n",
        "pipeline/ask.py": "from verify import parity\nfrom conversion import contract\n",
    }
    assert problems(files) == []


def test_an_upward_import_fails_with_its_line():
    assert problems({"data/x.py": "import os\n\nfrom conversion import contract\n"}) == [
        "data/x.py:3: imports conversion: code in data/ may import only common "
        '(docs/architecture.md, "Package layering")'
    ]


def test_an_import_inside_a_function_counts():
    text = "def f():\n    from verify import parity\n    return parity\n"
    assert problems({"conversion/x.py": text}) == [
        "conversion/x.py:2: imports verify: code in conversion/ may import only common, data "
        '(docs/architecture.md, "Package layering")'
    ]


def test_the_tests_column_admits_tests_only():
    assert problems({"conversion/x_test.py": "import verify.gguf_files.gguf_check\n"}) == []
    assert len(problems({"conversion/x.py": "import verify.gguf_files.gguf_check\n"})) == 1


def test_nothing_may_import_the_top():
    found = problems({"verify/x.py": "from pipeline import e2e\n"})
    assert len(found) == 1 and "imports pipeline" in found[0]


def test_a_package_without_a_row_fails():
    assert problems({"newpkg/x.py": "x = 1\n"}) == [
        "newpkg/x.py:1: package newpkg has no row in docs/architecture.md"
    ]


def test_a_table_that_makes_the_top_importable_or_cycles_fails():
    bad = dict(RULES, data=(frozenset({"common", "pipeline"}), frozenset()))
    assert "data: may import pipeline, but nothing may import pipeline, tests, bench" in layering.check_rules(
        bad
    )
    cyclic = dict(RULES, common=(frozenset({"verify"}), frozenset()))
    assert [p for p in layering.check_rules(cyclic) if p.startswith("cycle: ")]
    assert layering.check_rules(RULES) == []


def test_a_document_without_the_section_or_table_is_an_error():
    with pytest.raises(ValueError, match="no section"):
        layering.read_rules("# Architecture\n\n## Other\n")
    with pytest.raises(ValueError, match="no table"):
        layering.read_rules("## Package layering\n\nprose only\n")


def test_the_real_table_is_well_formed_and_puts_the_stages_in_order():
    with open(layering.DOCUMENT, encoding="utf-8") as handle:
        rules = layering.read_rules(handle.read())
    assert layering.check_rules(rules) == []
    # The stage order the document describes: each stage may import every stage before it, none after.
    stages = ["common", "data", "training", "conversion", "verify"]
    for i, stage in enumerate(stages):
        assert rules[stage][0] == frozenset(stages[:i]), stage
    # ood (the out-of-distribution questions) sits beside the stages: only the top packages read it.
    assert "ood" not in set().union(*(rules[stage][0] for stage in stages))
    for top in layering.TOP:
        assert rules[top][0] == frozenset(stages) | {"ood"}, top
