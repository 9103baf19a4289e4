"""The pipeline's report.html opens in headless Chromium, offline, and shows its four figure groups.

Chromium lays the page out; a small script added to a copy of the page (the page itself has none,
and its Content-Security-Policy forbids them, so the copy relaxes only script-src) writes what the
browser rendered into the DOM: the size of each section and of each figure, how many shapes each
figure drew, and how many resources the page fetched. --dump-dom prints that DOM. The original page
is loaded too, with its policy intact, to check it loads as shipped.

Network is off for the browser: every host name resolves to nothing and the proxy is a closed port.

Needs a chromium binary (Debian: `apt-get install chromium`; .ci/run installs it). Without one the
test is skipped with a message saying so. Input: $M8B_REPORT_HTML (set by pipeline/BUILD.bazel).
"""

import json
import os
import re
import shutil
import subprocess
import tempfile

import pytest

SECTIONS = ("loss-curves", "answer-distributions", "parity", "gates")
FIGURES = ("loss-curves", "answer-distributions", "parity")  # sections drawn with matplotlib
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

_MEASURE = """
<script>
const box = (e) => {
  const r = e.getBoundingClientRect();
  return [Math.round(r.width), Math.round(r.height)];
};
const out = {title: document.title, resources: performance.getEntriesByType("resource").length, sections: {}};
for (const s of document.querySelectorAll("section[id]")) {
  out.sections[s.id] = {box: box(s), tables: s.querySelectorAll("table").length,
    figures: [...s.querySelectorAll("figure svg, figure img")].map(
      (f) => ({box: box(f), shapes: f.querySelectorAll("path, rect, line, text, use").length}))};
}
const pre = document.createElement("pre");
pre.id = "m8b-layout";
pre.textContent = JSON.stringify(out);
document.body.appendChild(pre);
</script>
"""


def _missing(message: str) -> None:
    """The test's subject is missing: a skip, except under CI=true, where CI must have it."""
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def _browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    _missing(
        "no Chromium found (looked for " + ", ".join(BROWSERS) + " on PATH); install it to run this test: "
        "sudo apt-get install chromium"
    )


def _report_path() -> str:
    path = os.environ.get("M8B_REPORT_HTML")
    if not path:
        _missing(
            "set M8B_REPORT_HTML to a report.html (Bazel sets it for //pipeline:report_html_chromium_test)"
        )
    return os.path.abspath(path)


def _dump_dom(browser: str, page: str, profile: str) -> str:
    command = [
        browser,
        "--headless",
        "--no-sandbox",  # Bazel's sandbox and root both rule out Chromium's own sandbox
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        # Network off: no name resolves and any proxied request goes to a closed port.
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--proxy-server=127.0.0.1:9",
        "--window-size=1280,2000",
        f"--user-data-dir={profile}",
        "--dump-dom",
        "file://" + page,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"chromium exited {done.returncode}:\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def rendered():
    browser, report = _browser(), _report_path()
    with open(report, encoding="utf-8") as handle:
        original = handle.read()
    assert "script-src 'none'" in original, "the page should forbid scripts in its Content-Security-Policy"
    work = tempfile.mkdtemp(dir=os.environ.get("TEST_TMPDIR"))
    measured = os.path.join(work, "measured.html")
    with open(measured, "w", encoding="utf-8") as handle:
        handle.write(original.replace("script-src 'none'", "script-src 'unsafe-inline'").replace(
            "</body>", _MEASURE + "</body>"
        ))  # fmt: skip
    as_shipped = _dump_dom(browser, report, os.path.join(work, "profile-1"))
    dom = _dump_dom(browser, measured, os.path.join(work, "profile-2"))
    found = re.search(r'<pre id="m8b-layout">(.*?)</pre>', dom, re.S)
    assert found, "the layout probe did not run; the page did not load:\n" + dom[:2000]
    layout = json.loads(found.group(1).replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))
    print(json.dumps(layout, indent=1))
    return as_shipped, layout


def test_the_page_loads_as_shipped(rendered):
    as_shipped, _ = rendered
    assert "distillation report" in as_shipped
    for section in SECTIONS:
        assert f'id="{section}"' in as_shipped


def test_all_four_figure_groups_are_shown(rendered):
    _, layout = rendered
    assert "distillation report" in layout["title"]
    missing = [s for s in SECTIONS if s not in layout["sections"]]
    assert not missing, f"sections missing: {missing}"
    for section in SECTIONS:
        width, height = layout["sections"][section]["box"]
        assert width > 300 and height > 100, f"#{section} renders at {width}x{height}"
    for section in FIGURES:
        figures = layout["sections"][section]["figures"]
        assert figures, f"#{section} has no figure"
        for figure in figures:
            width, height = figure["box"]
            assert width > 300 and height > 150, f"a figure in #{section} renders at {width}x{height}"
            assert figure["shapes"] > 20, f"a figure in #{section} drew only {figure['shapes']} shapes"
    assert layout["sections"]["parity"]["tables"] >= 1
    assert layout["sections"]["gates"]["tables"] >= 2


def test_nothing_is_fetched(rendered):
    _, layout = rendered
    assert layout["resources"] == 0, "the page fetched resources; it must be self-contained"
