import os
import re
import shutil
import subprocess
import sys

import matplotlib
import pytest

from data import teacher
from verify.report import report_emoji, report_html

HOSTILE = "<script>alert(1)</script>"


def _inputs(hostile: str = "", failing: bool = False):
    report = {
        "model_name": "magic-8-ball" + hostile,
        "contract_sha256": "ab" * 32,
        "artifacts": {
            "torchscript": {"sha256": "cd" * 32, "size": 2_500_000},
            "coreml": {"sha256": "ef" * 32, "size": 1_300_000, "files": 3},
        },
        "results": {
            "torchscript": {
                f"T{n}": {
                    "max_abs_diff": {"value": 2e-7 * n, "op": "<=", "bound": 1e-4, "ok": True},
                    "top1_agreement": {"value": 1.0},
                }
                for n in (64, 128, 256)
            },
            "coreml": {
                "T64": {"max_abs_diff": {"value": 0.5 if failing else 0.04, "op": "<=", "bound": 0.1,
                                         "ok": not failing}},
                "T96": {"spec_supports_length": {"value": False, "op": "==", "bound": False, "ok": True}},
                "all": {"behaviour": {"error": "RuntimeError: " + hostile, "ok": False}} if hostile else {},
            },
        },
        "gates_ok": not failing and not hostile,
    }  # fmt: skip
    report["results"]["torchscript"]["all"] = {
        "sampled_canonical_rate": {"value": 0.998, "op": ">=", "bound": 0.995, "ok": True},
        "sampled_replies": {"value": 1000},
        "sampled_settings": {"value": "temperature 0.8, top_k 40, top_p 0.9, min_p 0.0; seeds 0, 1"},
        "sampled_non_canonical": {"value": [f"question 3 seed 4: ' good.{hostile}'"]},
    }
    contract = {
        "model_name": "magic-8-ball",
        "model_type": "magic-8-ball",
        "vocab_size": 512,
        "lengths": [64, 128, 256],
        "tokenizer_sha256": "12" * 32,
        "inputs": [{"name": "input_ids", "dtype": "int32", "shape": [1, "T"]}],
        "outputs": [{"name": "logits", "dtype": "float32", "shape": [1, "T", 512]}],
        "gates": {
            "backends": {"torchscript": "f32"},
            "methods": {"f32": "float64 eager vs float32 eager"},
            "bounds": {"f32": {"T64": {"kl_max": {"floor": 1e-12, "factor": 4.0, "bound": 4e-12}}}},
        },
    }
    metadata = {
        "parameter_count": 623_232,
        "final_train_loss": 0.5,
        "heldout_loss": 0.55,
        "training": {"steps": 3, "loss": "kl" + hostile},
    }
    history = [
        {"step": 1, "loss": 3.0, "heldout_loss": None},
        {"step": 2, "loss": 1.0, "heldout_loss": None},
        {"step": 3, "loss": 0.5, "heldout_loss": 0.55},
    ]
    answers = list(teacher.ANSWERS)
    answers[3] += hostile
    uniform = [1 / len(answers)] * len(answers)
    quality = {
        "questions": 2,
        "canonical_rate": 0.5,
        "mean_kl": 0.01,
        "max_tv": 0.02,
        "non_canonical": [{"question": "Will it? " + hostile, "reply": hostile, "ended": False}],
        "per_kind": {
            "will" + hostile: {"questions": 1, "tv": 0.02, "mean_kl": 0.01, "student": uniform,
                               "teacher": uniform},
            "is": {"questions": 1, "tv": 0.0, "mean_kl": 0.0, "student": uniform, "teacher": uniform},
        },
    }  # fmt: skip
    examples = {"will" + hostile: "Will I " + hostile + "?", "is": "Is it & so?"}
    return report, contract, metadata, history, quality, answers, examples


def test_every_section_and_figure_is_there():
    page = report_html.page(*_inputs())
    for section in report_html.SECTIONS:
        assert f'<section id="{section}">' in page
    assert page.count("<figure>\n<svg") == 3  # loss curves, distributions, parity (no summary: no variants)
    assert "Content-Security-Policy" in page and "<script" not in page
    assert "623,232" in page
    for length in (64, 128, 256):  # the parity table has a column per contract length
        assert f"<th>T{length}: measured, bound (floor)</th>" in page
    assert "<td>T96</td>" in page  # a probe outside the contract is listed with the other checks
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page), "the page must not fetch anything"


def test_the_sampled_gate_has_a_row_per_gated_backend():
    page = report_html.page(*_inputs())
    table = page.split("<h3>Sampled replies (ask's defaults)</h3>", 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr>(.*?)</tr>", table)
    assert len(rows) == 2 and "<td>torchscript</td>" in rows[1]  # the header, then torchscript only
    for cell in ("1000", "0.998", "&gt;= 0.995", "PASS", "top_k 40", "good."):
        assert cell in rows[1], cell


def test_hostile_strings_are_escaped_everywhere():
    page = report_html.page(*_inputs(HOSTILE))
    assert HOSTILE not in page
    assert "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "Is it &amp; so?" in page


def test_same_inputs_give_the_same_bytes():
    first = report_html.page(*_inputs()).encode()
    second = report_html.page(*_inputs()).encode()
    assert first == second
    assert b"Date" not in first and b"/tmp" not in first


def test_failures_are_shown():
    page = report_html.page(*_inputs(failing=True))
    assert '<span class="fail">FAIL</span>' in page
    assert report_html.artifact_gates(_inputs(failing=True)[0]) == {"torchscript": True, "coreml": False}


def _summary_rows(page: str) -> list[str]:
    section = page.split('<section id="summary">', 1)[1].split("</section>", 1)[0]
    return re.findall(r"<tr>(.*?)</tr>", section.split("<tbody>", 1)[1])


def test_the_page_opens_with_one_row_per_artifact():
    report, contract, *rest = _inputs(hostile=HOSTILE, failing=True)
    report["results"]["gguf_q8_0" + HOSTILE] = {
        "T64": {"kl_mean": {"value": 2.1e-4, "op": "<=", "bound": 1.0, "ok": True}}
    }
    report["summary"] = {
        "gguf_q8_0" + HOSTILE: {"size": 677_088, "kl_mean": 2.1e-4, "kl_max": 1.5e-3, "same_top": 0.985,
                                "rms_dp": 0.0049, "behaviour_agreement": 0.985},
        "torchscript": {"size": 2_500_000, "kl_mean": 0.0, "kl_max": 0.0, "same_top": 1.0, "rms_dp": 1e-7},
    }  # fmt: skip
    page = report_html.page(report, contract, *rest)
    assert page.index('<section id="summary">') < min(
        page.index(f'<section id="{section}">') for section in report_html.SECTIONS[1:]
    ), "the summary opens the page"
    rows = _summary_rows(page)
    # Every verified artifact, by family (TorchScript, Core ML, GGUF), whether or not it has a summary.
    assert [re.search(r"<td>(.*?)</td>", row).group(1) for row in rows] == [
        "torchscript", "coreml", "gguf_q8_0" + HOSTILE.replace("<", "&lt;").replace(">", "&gt;")
    ]  # fmt: skip
    torchscript, coreml, q8 = rows
    assert "PASS" in torchscript and "2.38 MiB" in torchscript and "100.00%" in torchscript
    assert "FAIL" in coreml and "2 of 3" in coreml and coreml.count("&#8211;") == 5  # no summary row
    assert "661.2 KiB" in q8 and "0.00021" in q8 and "98.50%" in q8 and "98.5%" in q8 and "0 of 1" in q8
    assert HOSTILE not in page


def test_the_variants_section_plots_every_summarized_artifact():
    report, contract, *rest = _inputs(hostile=HOSTILE)
    report["summary"] = {
        "gguf_q8_0" + HOSTILE: {"size": 677_088, "kl_mean": 2.1e-4},
        "gguf_kv_f16": {"size": 677_088, "kl_mean": 2.1e-4},
        "torchscript": {"size": 2_500_000, "kl_mean": 0.0},
    }
    section = report_html.page(report, contract, *rest).split('<section id="variants">', 1)[1]
    section = section.split("</section>", 1)[0]
    assert section.count("<svg") == 1 and HOSTILE not in section and "<table" not in section
    labels = re.findall(r"<text[^>]*>(.*?)</text>", section, re.S)
    # Two artifacts at one point share a label; every artifact is named.
    assert "gguf_kv_f16, gguf_q8_0&lt;script&gt;alert(1)&lt;/script&gt;" in labels
    assert "torchscript" in labels


def test_the_parity_figure_names_every_artifact_once_on_its_own_row():
    report, contract, *rest = _inputs()
    section = report_html.page(report, contract, *rest).split('<section id="parity">', 1)[1]
    figure = section.split("</figure>", 1)[0]
    labels = re.findall(r"<text[^>]*>(.*?)</text>", figure, re.S)
    assert labels.count("torchscript") == 1 and labels.count("coreml") == 1
    assert "T64" in labels and "T256" in labels  # the lengths are a legend, not one label per bar
    assert labels.count("T64") == 1


def test_emoji_are_drawn_by_the_page():
    report, contract, metadata, history, quality, answers, examples = _inputs()
    answers = [teacher.completion_text(a).strip() for a in range(len(teacher.ANSWERS))]
    examples = {"will": "Will I win? 🌟", "is": "Is it 🤔 or ☀ ❤️?"}
    page = report_html.page(report, contract, metadata, history, quality, answers, examples)
    # No emoji character is left for a font to draw: each is an inline <svg> named for it.
    assert not [c for c in page if report_emoji.is_emoji(c)]
    for flair, name in zip(
        teacher.FLAIRS, ("billiards", "crystal ball", "sparkles", "glowing star"), strict=True
    ):
        drawing = report_emoji.svg(flair)
        assert f'aria-label="{name}"' in drawing and ("<circle" in drawing or "<path" in drawing)
        assert page.count(drawing) >= 2  # in the answers table (flairs) and an example or two
    assert 'aria-label="thinking face"' in page and ">1F914</text>" in page  # no font has it: a badge
    assert 'aria-label="black sun with rays"' in page and 'fill="currentColor"' in page  # DejaVu's outline
    assert "\ufe0f" not in page and 'aria-label="heavy black heart"' in page


def test_emoji_text_is_escaped_and_joined_sequences_are_drawn_apart():
    text = report_emoji.html_text("<b>&</b> 👨\u200d👩 x\u200dy")
    assert text.startswith("&lt;b&gt;&amp;&lt;/b&gt; ")
    assert text.count("<svg") == 2 and "\u200d" not in text.split("x", 1)[0]
    assert "x\u200dy" in text  # a joiner between letters is not ours to drop


def test_figures_drawn_where_fontconfig_has_no_writable_cache_print_nothing(tmp_path):
    """A Bazel action has no HOME and a read-only /var/cache, and matplotlib runs fc-list to build
    its font cache: fontconfig printed "Fontconfig error: No writable cache directories" four times
    into the pipeline's output. report_figures gives fontconfig a cache directory of its own."""
    if shutil.which("fc-list") is None:
        pytest.skip("no fc-list on PATH: matplotlib does not run fontconfig here")
    conf = tmp_path / "fonts.conf"
    fonts = os.path.join(matplotlib.get_data_path(), "fonts", "ttf")
    conf.write_text(
        '<?xml version="1.0"?>\n<!DOCTYPE fontconfig SYSTEM "urn:fontconfig:fonts.dtd">\n'
        f"<fontconfig><dir>{fonts}</dir><cachedir>/proc/m8b-no-cache</cachedir>"
        '<cachedir prefix="xdg">fontconfig</cachedir></fontconfig>\n'
    )
    # An action's environment: no HOME, no XDG_CACHE_HOME; the only system cache is unwritable.
    env = {"PATH": "/bin:/usr/bin:/usr/local/bin", "FONTCONFIG_FILE": str(conf)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)

    def run(code: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, check=False
        )

    bare = run(
        "import os, tempfile; os.environ['MPLCONFIGDIR'] = tempfile.mkdtemp(); import matplotlib.pyplot"
    )
    assert "Fontconfig error: No writable cache directories" in bare.stderr, "the setting does not bite"
    drawn = run(
        "from verify.report import report_figures; report_figures.loss_curves_svg([{'step': 1, 'loss': 1.0}])"
    )
    assert drawn.returncode == 0 and drawn.stdout + drawn.stderr == "", drawn.stderr
