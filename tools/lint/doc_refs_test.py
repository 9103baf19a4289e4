"""doc_refs on planted references: each bad kind fails with its line, each good kind passes.

The planted names are put together at run time, so this file holds no bad reference of its own
for //:doc_refs_test to find.
"""

from tools.lint import doc_refs

MD = ".md"
GUIDE = "docs/guide" + MD
GUIDE_TEXT = "# Guide\n\n## The contract\n\ntext\n\n```\n# Not a heading\n```\n\n## `Core ML` on Linux\n"
OUTSIDE = "/" + "work/other-checkout/notes"  # an absolute path into another checkout


def problems(files: dict[str, str]) -> list[str]:
    return [str(p) for p in doc_refs.check({GUIDE: GUIDE_TEXT, **files})]


def test_a_reference_to_an_existing_document_and_heading_passes():
    assert problems({"a/mod.py": f'"""See {GUIDE}, "The contract"."""\n'}) == []
    assert problems({"a/mod.py": f"# {GUIDE}#core-ml-on-linux\nx = 1\n"}) == []
    assert problems({"README" + MD: f'[guide]({GUIDE}), "core ml on linux"\n'}) == []


def test_a_missing_document_fails_with_its_line():
    missing = "DESIGN" + MD
    assert problems({"a/mod.py": f"x = 1\n# the rule ({missing}, 'why')\n"}) == [
        f"a/mod.py:2: {missing}: no such document in the repository; cite one that is"
    ]


def test_a_missing_document_fails_in_code_strings_too():
    missing = "notes/setup" + MD
    assert problems({"a/cli.py": f'raise SystemExit("see {missing}")\n'}) == [
        f"a/cli.py:1: {missing}: no such document in the repository; cite one that is"
    ]


def test_a_missing_heading_fails():
    assert problems({"a/mod.py": f'# ({GUIDE}, "The contrat")\n'}) == [
        f'a/mod.py:1: {GUIDE}, "The contrat": no such heading'
    ]
    assert problems({"a/mod.py": f"# {GUIDE}#gates\n"}) == [f"a/mod.py:1: {GUIDE}#gates: no such heading"]


def test_a_heading_in_a_fenced_block_is_not_a_heading():
    assert problems({"a/mod.py": f'# {GUIDE}, "Not a heading"\n'}) == [
        f'a/mod.py:1: {GUIDE}, "Not a heading": no such heading'
    ]


def test_a_section_named_on_the_next_comment_line_is_checked():
    good = f'# rules ({GUIDE},\n# "The contract") apply\n'
    bad = f'x = 1\n# rules ({GUIDE},\n# "The wrong one") apply\n'
    assert problems({"a/mod.py": good, "b.sh": good}) == []
    assert problems({"a/mod.py": bad}) == [f'a/mod.py:2: {GUIDE}, "The wrong one": no such heading']


def test_a_reference_resolves_beside_the_file_first_then_from_the_root():
    local = "third_party/python/README" + MD
    files = {local: "# Lock\n", "third_party/python/lock.sh": "# README" + MD + ' here, "Lock"\n'}
    assert problems(files) == []
    # From another directory the bare name means the root's README, which does not exist here.
    assert problems({local: "# Lock\n", "conversion/x.py": "# README" + MD + "\n"}) == [
        "conversion/x.py:1: README" + MD + ": no such document in the repository; cite one that is"
    ]


def test_a_path_that_climbs_out_of_the_repository_fails_in_prose():
    climbing = "../team-notes/DESIGN" + MD
    assert problems({"a.sh": f"# see {climbing}\n"}) == [
        f"a.sh:1: {climbing}: leaves the repository; cite a file inside it"
    ]
    assert problems({"a/mod.py": '"""Notes live in ../../sibling/notes.txt."""\n'}) == [
        "a/mod.py:1: ../../sibling/notes.txt: leaves the repository; cite a file inside it"
    ]


def test_a_climbing_path_that_stays_inside_passes():
    files = {"docs/other" + MD: f"[guide](../{GUIDE}) and ../tools/lint\n", "tools/lint/x.py": ""}
    assert problems(files) == []


def test_a_going_up_path_to_nothing_fails():
    assert problems({"conversion/x.py": "# as measured in ../team-notes/notes.txt\n"}) == [
        "conversion/x.py:1: ../team-notes/notes.txt: names no file or directory of the repository from here"
    ]


def test_code_strings_may_climb_runfiles_paths():
    assert problems({"a/b_test.py": 'IDENTITY = "../../python311/interpreter_identity.txt"\n'}) == []


def test_an_absolute_path_outside_the_repository_fails_in_prose():
    expected = "an absolute path outside the repository; cite a repository file"
    for name, text in {
        "a/mod.py": f"x = 1  # measured in {OUTSIDE}\n",
        "b/mod.py": f'def f():\n    """From {OUTSIDE}."""\n',
        ".bazelrc": f"# see {OUTSIDE}\nbuild --x\n",
        "notes" + MD: f"Read {OUTSIDE}.\n",
    }.items():
        found = problems({name: text})
        assert len(found) == 1 and expected in found[0], (name, found)


def test_system_paths_and_urls_pass():
    text = "# /usr/bin/bazel, /etc/bazel/bazelrc, /dev/shm; https://example.com/x/README" + MD + "\n"
    assert problems({"a.sh": text}) == []
