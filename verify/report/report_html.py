"""report.html: one self-contained page a person reads to judge a distillation run.

    page(report, contract, metadata, history, quality, answers, examples) -> str

Six sections, each with a stable id the browser test looks for; the first reads at a glance, the
per-check tables come after it:
  #summary               one row per artifact: verdict, size, KL, same top, behaviour agreement,
                         failed checks (report.json "summary", verify/report/artifact_summary.py)
  #loss-curves           train and held-out loss per step (figure)
  #answer-distributions  teacher vs student answer distribution per question kind (figure + tables)
  #parity                every artifact's checks at every contract length, measured value vs bound
                         (figure + table)
  #variants              every artifact's size against its mean KL (the Pareto picture users pick
                         a variant from)
  #gates                 `ask`'s sampled replies per backend (canonical rate against its bound),
                         artifact sizes and digests, the model card

Self-contained: figures are inline SVG, styles inline, no scripts, no links to fetch; a
Content-Security-Policy forbids any load, so a page that opens offline cannot depend on a network
by accident. Every string that comes from a file (questions, answers, kinds, metadata, report
entries) goes through html.escape: the dataset is input, and input may contain markup. Emoji in
them are drawn by the page (verify/report/report_emoji.py), so they look the same without an emoji font.
The page is a function of its arguments only (no clock, no paths), so equal inputs give equal bytes.
"""

import html
import json

from verify.report import report_emoji, report_figures

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; script-src 'none'"
SECTIONS = ("summary", "loss-curves", "answer-distributions", "parity", "variants", "gates")

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 64rem; color: #222;
  padding: 0 1rem; }
h1 { margin-bottom: 0.2rem; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; margin-top: 2.5rem; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.85rem; }
th, td { border-bottom: 1px solid #e5e5e5; padding: 0.2rem 0.6rem; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
code, .digest { font-family: ui-monospace, monospace; font-size: 0.8rem; word-break: break-all; }
figure { margin: 0.8rem 0; } figure svg { max-width: 100%; height: auto; }
figcaption { font-size: 0.85rem; color: #555; }
.pass { color: #1b7f3b; font-weight: 600; } .fail { color: #b3261e; font-weight: 600; }
.verdict { font-size: 1.2rem; } small { color: #666; } summary { cursor: pointer; margin: 0.8rem 0; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 0.2rem 1rem; }
dt { font-weight: 600; } dd { margin: 0; }
svg.emoji { vertical-align: -0.25em; }
"""


def _e(value) -> str:
    """Text content: escaped, emoji drawn inline (verify/report/report_emoji.py)."""
    return report_emoji.html_text(value)


def _verdict(ok: bool | None) -> str:
    if ok is None:
        return ""
    return '<span class="pass">PASS</span>' if ok else '<span class="fail">FAIL</span>'


def _table(header: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
    """Cells are HTML already (callers escape); `numeric` columns are right-aligned."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(row))
        + "</tr>\n"
        for row in rows
    )
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>\n"


def _number(value) -> str:
    """A measured value or bound as plain text (callers escape it)."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return json.dumps(value) if isinstance(value, list | dict) else str(value)


def _scope_order(scope: str) -> tuple[int, int]:
    return (0, int(scope[1:])) if scope.startswith("T") and scope[1:].isdigit() else (1, 0)


def _section(section_id: str, title: str, body: str) -> str:
    return f'<section id="{section_id}">\n<h2>{_e(title)}</h2>\n{body}</section>\n'


def _figure(svg: str, caption: str) -> str:
    return f"<figure>\n{svg}<figcaption>{_e(caption)}</figcaption>\n</figure>\n"


def artifact_gates(report: dict) -> dict[str, bool]:
    """An artifact passes when every check recorded for it passed (notes have no verdict)."""
    return {
        artifact: all(entry.get("ok", True) for checks in scopes.values() for entry in checks.values())
        for artifact, scopes in report["results"].items()
    }


def _loss_section(history: list[dict], metadata: dict) -> str:
    caption = (
        f"Loss per step over {len(history)} steps; held-out loss at its evaluation steps. "
        f"Final train loss {metadata.get('final_train_loss', float('nan')):.4f} (mean of the last steps), "
        f"held-out {metadata.get('heldout_loss', float('nan')):.4f}."
    )
    return _section("loss-curves", "Loss curves", _figure(report_figures.loss_curves_svg(history), caption))


def _distribution_section(quality: dict, answers: list[str], examples: dict[str, str]) -> str:
    per_kind = quality["per_kind"]
    figure = _figure(
        report_figures.answer_distributions_svg(per_kind, answers),
        f"Mean probability of each of the {len(answers)} answers per question kind, over "
        f"{quality['questions']} held-out questions: teacher (blue) and student (orange).",
    )
    canonical, kl, tv = quality["canonical_rate"], quality["mean_kl"], quality["max_tv"]
    facts = (
        f"<p>Greedy replies that are canonical answers: {canonical:.2%}. "
        f"Mean KL(teacher &#8214; student): {kl:.4f} nats. "
        f"Largest per-kind total variation: {tv:.4f}.</p>\n"
    )
    kinds = _table(
        ["kind", "questions", "TV", "KL", "example question"],
        [
            [
                _e(kind),
                _e(row["questions"]),
                _e(f"{row['tv']:.4f}"),
                _e(f"{row['mean_kl']:.4f}"),
                _e(examples.get(kind, "")),
            ]
            for kind, row in sorted(per_kind.items())
        ],
        numeric={1, 2, 3},
    )
    numbered = _table(
        ["#", "answer, with its flair"], [[_e(i), _e(text)] for i, text in enumerate(answers, 1)], numeric={0}
    )
    odd = ""
    if quality.get("non_canonical"):
        odd = "<p>Replies that were not canonical answers:</p>\n" + _table(
            ["question", "reply", "ended"],
            [[_e(x["question"]), _e(x["reply"]), _e(x["ended"])] for x in quality["non_canonical"]],
        )
    body = figure + facts + kinds + numbered + odd
    return _section("answer-distributions", "Teacher vs student answer distributions", body)


def _parity_section(report: dict, contract: dict) -> str:
    max_abs = {
        artifact: {
            int(scope[1:]): checks["max_abs_diff"]["value"]
            for scope, checks in scopes.items()
            if "max_abs_diff" in checks and isinstance(checks["max_abs_diff"].get("value"), int | float)
        }
        for artifact, scopes in report["results"].items()
    }
    bounds = {
        artifact: next(
            (c["max_abs_diff"]["bound"] for c in scopes.values() if "max_abs_diff" in c), float("inf")
        )
        for artifact, scopes in report["results"].items()
    }
    max_abs = {a: max_abs[a] for a in _artifact_order(report) if max_abs[a]}  # the summary's order
    body = ""
    if max_abs:
        lengths = ", ".join(f"T{n}" for n in contract.get("lengths", []))
        body += _figure(
            report_figures.parity_svg(max_abs, {a: bounds[a] for a in max_abs}),
            f"Largest logit difference from fp32 eager PyTorch at each contract length ({lengths}); "
            "dashed: the contract's bound; an exact 0 is drawn at 1e-9, the bottom of the log axis.",
        )
    lengths = [f"T{n}" for n in contract.get("lengths", [])]
    body += "<h3>At every contract length</h3>\n" + _length_table(report, lengths)
    body += (
        "<details>\n<summary>Whole-artifact checks (interface, behaviour, tokenizer) and probes "
        "outside the contract</summary>\n" + _other_checks_table(report, set(lengths)) + "</details>\n"
    )
    return _section("parity", "Parity of every artifact at every length", body)


# Families (an artifact name's first word) in the order the summary lists them: the PyTorch exports
# (TorchScript, torch.export, AOTInductor), Core ML, GGUF; within a family the largest file first.
_FAMILIES = ("torchscript", "torch", "aoti", "coreml", "gguf")


def _human_size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KiB"
    return f"{size / (1024 * 1024):.2f} MiB"


def _artifact_order(report: dict) -> list[str]:
    """The verified artifacts by family (_FAMILIES), the largest file first within one."""
    summary = report.get("summary") or {}

    def key(name: str):
        family = name.split("_", 1)[0]
        rank = _FAMILIES.index(family) if family in _FAMILIES else len(_FAMILIES)
        return rank, -summary.get(name, {}).get("size", 0), name

    return sorted(report["results"], key=key)


def _summary_section(report: dict, contract: dict) -> str:
    """The page's opening: one row per verified artifact, read at a glance
    (verify/report/artifact_summary.py)."""
    summary = report.get("summary") or {}
    precisions = contract.get("gates", {}).get("backends", {})
    gates = artifact_gates(report)

    def fmt(row, key, pattern="{:.3g}"):
        return _e(pattern.format(row[key])) if key in row else "&#8211;"

    rows = []
    for name in _artifact_order(report):
        row, scopes = summary.get(name, {}), report["results"][name]
        failed = _count(scopes, False)
        size = (
            f'<span title="{row["size"]:,} bytes">{_e(_human_size(row["size"]))}</span>'
            if "size" in row
            else "&#8211;"
        )
        rows.append(
            [
                _e(name),
                _verdict(gates[name]),
                _e(precisions.get(name, "")),
                size,
                fmt(row, "kl_mean"),
                fmt(row, "kl_max"),
                fmt(row, "same_top", "{:.2%}"),
                fmt(row, "behaviour_agreement", "{:.1%}"),
                _e(f"{failed} of {failed + _count(scopes, True)}"),
            ]
        )
    header = ["artifact", "verdict", "precision", "size", "KL mean", "KL max", "same top", "agreement",
              "failed checks"]  # fmt: skip
    note = (
        "<p><small>KL: KL(eager &#8214; artifact) of the next-token distributions at the worst "
        "contract length, mean and max over positions. Same top: positions whose most likely token "
        "is eager's. Agreement: held-out questions whose greedy reply through the artifact is "
        "eager's canonical answer, where measured (verify/behaviour/greedy_agreement.py). Every check, with "
        "its bound and floor, is in the tables below and in report.json.</small></p>\n"
    )
    return _section("summary", "Every artifact at a glance", _table(header, rows, {3, 4, 5, 6, 7, 8}) + note)


def _variants_section(report: dict) -> str:
    """Size against KL for every artifact: the picture a user picks a variant from."""
    summary = report.get("summary") or {}
    if not summary:
        return _section("variants", "Variants: size against distribution error", "<p>No artifact ran.</p>\n")
    figure = _figure(
        report_figures.size_vs_kld_svg(summary),
        "File size against mean KL(eager || artifact) at the worst contract length: down and to the "
        "left is better; a variant is worth shipping when no other is both smaller and closer. "
        "The numbers are in the first table of this page.",
    )
    return _section("variants", "Variants: size against distribution error", figure)


def _cell(entry: dict) -> tuple[str, str]:
    """(measured, bound) as plain text for one report entry; the bound names the floor it came from."""
    if "error" in entry:
        return "error: " + entry["error"], ""
    if "op" in entry:
        bound = f"{entry['op']} {_number(entry['bound'])}"
        if "floor" in entry:
            bound += f" (floor {_number(entry['floor'])})"
        return _number(entry["value"]), bound
    if "implied_by" in entry:  # information: the named gate decides it (verify/report/report.py)
        return _number(entry["value"]), f"(implied by {entry['implied_by']})"
    return _number(entry["value"]), "(note)"


def _length_table(report: dict, lengths: list[str]) -> str:
    """One row per artifact and check, one column per contract length: measured, bound, verdict."""
    rows = []
    for artifact in _artifact_order(report):  # the summary's order
        scopes = report["results"][artifact]
        names = list(dict.fromkeys(name for scope in lengths for name in scopes.get(scope, {})))
        for name in names:
            cells = [_e(artifact), _e(name)]
            for scope in lengths:
                entry = scopes.get(scope, {}).get(name)
                if entry is None:
                    cells.append("")
                    continue
                value, bound = _cell(entry)
                cells.append(f"{_e(value)} <small>{_e(bound)}</small> {_verdict(entry.get('ok'))}".rstrip())
            rows.append(cells)
    numeric = set(range(2, 2 + len(lengths)))
    return _table(["artifact", "check", *(f"{n}: measured, bound (floor)" for n in lengths)], rows, numeric)


def _other_checks_table(report: dict, lengths: set[str]) -> str:
    rows = []
    for artifact in _artifact_order(report):  # the summary's order
        scopes = report["results"][artifact]
        for scope in sorted(set(scopes) - lengths, key=_scope_order):
            for name, entry in scopes[scope].items():
                cells = [_e(text) for text in (artifact, scope, name, *_cell(entry))]
                rows.append([*cells, _verdict(entry.get("ok"))])
    return _table(["artifact", "scope", "check", "measured", "bound", "verdict"], rows, numeric={3})


def _count(scopes: dict, verdict) -> int:
    return sum(entry.get("ok", None) is verdict for checks in scopes.values() for entry in checks.values())


def _model_card(report: dict, contract: dict, metadata: dict, quality: dict) -> dict[str, str]:
    """Plain text facts; the caller escapes them."""
    training = metadata.get("training", {})
    model = contract.get("model_name", report.get("model_name", ""))
    return {
        "model": f"{model} ({contract.get('model_type', '')})",
        "parameters": f"{metadata.get('parameter_count', 0):,}",
        "vocabulary": str(contract.get("vocab_size", "")),
        "contract lengths": ", ".join(f"T{n}" for n in contract.get("lengths", [])),
        "inputs": "; ".join(f"{i['name']} {i['dtype']} {i['shape']}" for i in contract.get("inputs", [])),
        "outputs": "; ".join(f"{o['name']} {o['dtype']} {o['shape']}" for o in contract.get("outputs", [])),
        "gates": "; ".join(
            f"{backend} {precision} (floor: {contract['gates']['methods'].get(precision, '')})"
            for backend, precision in sorted(contract.get("gates", {}).get("backends", {}).items())
        )
        + "; bound = floor x factor, factors "
        + ", ".join(
            sorted(
                {
                    _number(entry["factor"])
                    for scopes in contract.get("gates", {}).get("bounds", {}).values()
                    for metrics in scopes.values()
                    for entry in metrics.values()
                }
            )
        ),
        "tokenizer sha256": contract.get("tokenizer_sha256", ""),
        "contract sha256": report.get("contract_sha256", ""),
        "training": (
            f"{training.get('steps', metadata.get('steps', ''))} steps x {training.get('batch_size', '')} "
            f"sequences, lr {training.get('lr', '')}, seed {training.get('seed', '')}; "
            f"{metadata.get('train_records', '')} train / "
            f"{metadata.get('heldout_records', '')} held-out records"
        ),
        "loss": training.get("loss", ""),
        "behaviour": (
            f"{quality['canonical_rate']:.2%} canonical greedy replies, "
            f"max per-kind TV {quality['max_tv']:.4f} over {quality['questions']} held-out questions"
        ),
    }


def _sampled_table(report: dict) -> str:
    """One row per backend gated on `ask`'s sampled replies (verify/behaviour/sampled_behaviour.py)."""
    rows = []
    for artifact in _artifact_order(report):  # the summary's order
        scopes = report["results"][artifact]
        checks = scopes.get("all", {})
        if "sampled_canonical_rate" not in checks:
            continue
        rate, bound = _cell(checks["sampled_canonical_rate"])
        replies, settings, odd = (
            _number(checks.get(name, {}).get("value", ""))
            for name in ("sampled_replies", "sampled_settings", "sampled_non_canonical")
        )
        verdict = _verdict(checks["sampled_canonical_rate"].get("ok"))
        rows.append([_e(artifact), _e(replies), _e(rate), _e(bound), verdict, _e(settings), _e(odd)])
    if not rows:
        return ""
    header = ["artifact", "replies", "canonical rate", "bound", "verdict", "sampler", "non-canonical"]
    return "<h3>Sampled replies (ask's defaults)</h3>\n" + _table(header, rows, numeric={1, 2})


def _gates_section(report: dict, contract: dict, metadata: dict, quality: dict) -> str:
    artifacts = _table(
        ["artifact", "size (bytes)", "files", "sha256"],
        [
            [_e(name), _e(f"{facts.get('size', 0):,}"), _e(facts.get("files", 1)),
             f'<span class="digest">{_e(facts.get("sha256", ""))}</span>']
            for name, facts in sorted(report.get("artifacts", {}).items())
        ],
        numeric={1, 2},
    )  # fmt: skip
    card = _model_card(report, contract, metadata, quality)
    card_html = "<dl>\n" + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>\n" for k, v in card.items()) + "</dl>\n"
    body = (
        f'<p class="verdict">gates_ok: {_verdict(bool(report.get("gates_ok")))}</p>\n'
        + _sampled_table(report)
        + "<h3>Artifacts</h3>\n"
        + artifacts
        + "<h3>Model card</h3>\n"
        + card_html
    )
    return _section("gates", "Sampled replies, artifacts and model card", body)


def page(
    report: dict,
    contract: dict,
    metadata: dict,
    history: list[dict],
    quality: dict,
    answers: list[str],
    examples: dict[str, str],
) -> str:
    """The whole page. `quality` is training.evaluate.evaluate's result; `examples` maps kind -> question."""
    model = report.get("model_name", "")
    title = f"{model} distillation report"
    overall = bool(report.get("gates_ok"))
    sections = [
        _summary_section(report, contract),
        _loss_section(history, metadata),
        _distribution_section(quality, answers, examples),
        _parity_section(report, contract),
        _variants_section(report),
        _gates_section(report, contract, metadata, quality),
    ]
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<header>\n<h1>{_e(title)}</h1>\n"
        f'<p class="verdict">Every artifact at every contract length: {_verdict(overall)}</p>\n</header>\n'
        + "".join(sections)
        + "</body>\n</html>\n"
    )
