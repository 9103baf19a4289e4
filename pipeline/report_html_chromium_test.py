"""The pipeline's report.html opens in headless Chromium, offline, reads at a glance, and its figures'
labels do not collide at 1280 px.

Chromium lays the page out; a small script added to a copy of the page (the page itself has none,
and its Content-Security-Policy forbids them, so the copy relaxes only script-src) writes what the
browser rendered into the DOM: the size of each section and of each figure, how many shapes each
figure drew, the box of every text label in every figure, the emoji drawings and any emoji left
for a font to draw, and how many resources the page fetched. --dump-dom prints that DOM. The
original page is loaded too, with its policy intact, to check it loads as shipped, and is
screenshotted at 1280 px wide (report.png in the test's undeclared outputs, to look at).

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

SECTIONS = ("summary", "loss-curves", "answer-distributions", "parity", "variants", "gates")
FIGURES = ("loss-curves", "answer-distributions", "parity", "variants")  # sections drawn with matplotlib
WIDTH = 1280  # the window the page must read well in
MIN_LABEL_PX = 9  # the smallest figure label height that reads at WIDTH
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

_MEASURE = r"""
<script>
const box = (e) => {
  const r = e.getBoundingClientRect();
  return [Math.round(r.width), Math.round(r.height)];
};
// Every label a figure shows, as the browser laid it out, and each pair whose boxes overlap.
const labels = (f) => [...f.querySelectorAll("text")].filter((t) => t.textContent.trim()).map((t) => {
  const r = t.getBoundingClientRect();
  return {text: t.textContent.trim(), l: r.left, t: r.top, r: r.right, b: r.bottom};
}).filter((b) => b.r > b.l && b.b > b.t);
const collisions = (boxes) => {
  const hits = [];
  for (let i = 0; i < boxes.length; i++) {
    for (let j = i + 1; j < boxes.length; j++) {
      const a = boxes[i], b = boxes[j];
      const w = Math.min(a.r, b.r) - Math.max(a.l, b.l), h = Math.min(a.b, b.b) - Math.max(a.t, b.t);
      if (w > 1 && h > 1) hits.push([a.text, b.text]);
    }
  }
  return hits;
};
// Emoji code points left in the text for a font to draw (the page draws its own:
// verify/report/report_emoji.py).
const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
const emoji = /[\u{1F000}-\u{1FAFF}\u{2600}-\u{27BF}\u{2B00}-\u{2BFF}]/u;
let fontEmoji = 0;
for (let n = walker.nextNode(); n; n = walker.nextNode()) {
  if (n.parentElement.closest("svg") === null && emoji.test(n.textContent)) fontEmoji++;
}
const out = {title: document.title, resources: performance.getEntriesByType("resource").length, sections: {},
  height: document.documentElement.scrollHeight,
  fontEmoji, emojiDrawings: [...document.querySelectorAll("svg.emoji")].map(
    (e) => ({name: e.getAttribute("aria-label"), box: box(e)}))};
for (const s of document.querySelectorAll("section[id]")) {
  out.sections[s.id] = {box: box(s), tables: s.querySelectorAll("table").length,
    figures: [...s.querySelectorAll("figure svg, figure img")].map((f) => {
      const boxes = labels(f);
      return {box: box(f), shapes: f.querySelectorAll("path, rect, line, text, use").length,
        labels: boxes.map((b) => b.text), collisions: collisions(boxes),
        smallestLabel: Math.min(...boxes.map((b) => b.b - b.t))};
    })};
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


def _chromium(
    browser: str, page: str, profile: str, *output: str, height: int = 2000
) -> subprocess.CompletedProcess:
    """Headless Chromium on file://page in a WIDTH x height window with the network off, then
    `output` (--dump-dom, ...)."""
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
        f"--window-size={WIDTH},{height}",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        *output,
        "file://" + page,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"chromium exited {done.returncode}:\n{done.stderr[-3000:]}"
    return done


def _dump_dom(browser: str, page: str, profile: str) -> str:
    return _chromium(browser, page, profile, "--dump-dom").stdout


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
    # The whole page as a person sees it at WIDTH, kept for a look (Bazel keeps undeclared outputs).
    shots = os.environ.get("TEST_UNDECLARED_OUTPUTS_DIR", work)
    screenshot = os.path.join(shots, "report.png")
    profile = os.path.join(work, "profile-3")
    _chromium(browser, report, profile, f"--screenshot={screenshot}", height=min(layout["height"], 30_000))
    assert os.path.getsize(screenshot) > 10_000, "the screenshot is nearly empty"
    return as_shipped, layout


def test_the_page_loads_as_shipped(rendered):
    as_shipped, _ = rendered
    assert "distillation report" in as_shipped
    for section in SECTIONS:
        assert f'id="{section}"' in as_shipped


def test_every_figure_group_is_shown(rendered):
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


def test_the_page_opens_with_a_row_per_artifact(rendered):
    as_shipped, layout = rendered
    first = re.search(r'<section id="([^"]+)"', as_shipped).group(1)
    assert first == "summary", f"the page opens with #{first}"
    assert layout["sections"]["summary"]["tables"] == 1
    summary = as_shipped.split('<section id="summary">', 1)[1].split("</section>", 1)[0]
    rows = re.findall(r"<tr>(.*?)</tr>", summary.split("<tbody>", 1)[1], re.S)
    parity = [f for f in layout["sections"]["parity"]["figures"]][0]
    assert len(rows) >= 2 and all(("PASS" in row) != ("FAIL" in row) for row in rows)
    for row in rows:  # each verified artifact is a row label of the parity figure too
        assert re.search(r"<td>(.*?)</td>", row).group(1) in parity["labels"]


def test_figure_labels_do_not_collide_and_read_at_1280_px(rendered):
    _, layout = rendered
    for section in FIGURES:
        for figure in layout["sections"][section]["figures"]:
            hits = figure["collisions"]
            assert not hits, f"#{section}: labels drawn over each other: {hits}"
            assert figure["smallestLabel"] >= MIN_LABEL_PX, (
                f"#{section}: a label is {figure['smallestLabel']:.1f} px tall at {WIDTH} px"
            )


def test_emoji_look_the_same_without_an_emoji_font(rendered):
    _, layout = rendered
    assert layout["fontEmoji"] == 0, "emoji left in the text: a browser without an emoji font shows boxes"
    drawings = layout["emojiDrawings"]
    names = {d["name"] for d in drawings}
    assert {"billiards", "crystal ball", "sparkles", "glowing star"} <= names, names  # the flairs
    for drawing in drawings:
        width, height = drawing["box"]
        assert width >= 10 and height >= 10, f"{drawing['name']} renders at {width}x{height}"


def test_nothing_is_fetched(rendered):
    _, layout = rendered
    assert layout["resources"] == 0, "the page fetched resources; it must be self-contained"
