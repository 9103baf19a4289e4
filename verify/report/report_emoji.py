"""Emoji on report.html drawn by the page itself: the same picture on every machine, emoji font or not.

    html_text(text) -> str   text escaped for HTML, each emoji replaced by an inline <svg>

Questions and replies carry emoji (the flairs 🎱 🔮 ✨ 🌟 of data/teacher.py, and the symbols the
training noise of data/augment.py inserts), and a browser without an emoji font shows each one as
an empty box. Nothing may be downloaded, and no locked package ships an emoji font, so:

- the four flairs are small colour drawings made here (FLAIRS);
- any other emoji whose outline DejaVu Sans has (matplotlib's own copy of the font, a locked
  package) is that outline, as a path, in the text colour;
- anything else in the emoji ranges is a badge with its code point, its Unicode name on hover.

Variation selector 16 (U+FE0F, "draw as emoji") and the zero-width joiner are dropped next to an
emoji: each emoji of a sequence is drawn on its own. Every drawing names its emoji (role="img",
aria-label and <title>: the Unicode name), and the output is a function of the text only.
"""

import functools
import html
import math
import os
import unicodedata

# Code points drawn as emoji: the pictographic blocks (emoticons, symbols and pictographs, transport,
# supplemental symbols, flags and the rest of plane 1's emoji), Miscellaneous Symbols, Dingbats
# and the stars and arrows of U+2B00-U+2BFF. Text fonts lack most of them; where one has a glyph
# it draws it in its own style, which is what "the same everywhere" rules out.
RANGES = ((0x1F000, 0x1FAFF), (0x2600, 0x27BF), (0x2B00, 0x2BFF))
_JOINERS = {"\ufe0f", "\u200d"}  # variation selector 16, zero-width joiner

# Sized in em, so a drawing is as tall as the text around it (width in proportion to its box).
_SVG = (
    '<svg class="emoji" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width:g} 16" '
    'width="{em:.3g}em" height="1.2em" role="img" aria-label="{name}"><title>{name}</title>{body}</svg>'
)


def _star(cx: float, cy: float, outer: float, inner: float, points: int) -> str:
    """A star polygon as a path: `points` tips at radius `outer`, notches at `inner`, tip up."""
    corners = []
    for k in range(2 * points):
        radius = outer if k % 2 == 0 else inner
        angle = math.pi * k / points - math.pi / 2
        corners.append(f"{cx + radius * math.cos(angle):.2f} {cy + radius * math.sin(angle):.2f}")
    return "M" + " L".join(corners) + " Z"


def _sparkle(cx: float, cy: float, size: float) -> str:
    """A four-pointed sparkle: curved sides pulled in to the centre."""
    return (
        f"M{cx} {cy - size} Q{cx} {cy} {cx + size} {cy} Q{cx} {cy} {cx} {cy + size} "
        f"Q{cx} {cy} {cx - size} {cy} Q{cx} {cy} {cx} {cy - size} Z"
    )


# The flairs in a 16 x 16 box, each recognisable at text size: colours as emoji fonts draw them.
FLAIRS = {
    "🎱": (
        '<circle cx="8" cy="8" r="7.5" fill="#1d1d1f"/>'
        '<circle cx="9.3" cy="6.6" r="3.7" fill="#ffffff"/>'
        '<circle cx="9.3" cy="5.4" r="1.05" fill="none" stroke="#1d1d1f" stroke-width="0.9"/>'
        '<circle cx="9.3" cy="7.75" r="1.3" fill="none" stroke="#1d1d1f" stroke-width="0.9"/>'
    ),
    "🔮": (
        '<path d="M4.2 12.6 L11.8 12.6 L13.4 15.6 L2.6 15.6 Z" fill="#8a5a2b"/>'
        '<circle cx="8" cy="7.2" r="6.3" fill="#8e5cd9"/>'
        '<circle cx="6.1" cy="5.2" r="2.6" fill="#c9adf2"/>'
        '<circle cx="5.4" cy="4.4" r="0.9" fill="#ffffff"/>'
    ),
    "✨": (
        f'<path d="{_sparkle(6.2, 9.4, 5.8)}" fill="#f7b500"/>'
        f'<path d="{_sparkle(12.4, 3.9, 3.3)}" fill="#ffd43b"/>'
        f'<path d="{_sparkle(12.9, 12.6, 2.4)}" fill="#ffd43b"/>'
    ),
    "🌟": (
        '<circle cx="8" cy="8.4" r="7.6" fill="#fff1b8"/>'
        f'<path d="{_star(8, 8.9, 6.9, 2.9, 5)}" fill="#ffc928" stroke="#f08c00" stroke-width="0.7"/>'
    ),
}


def is_emoji(char: str) -> bool:
    code = ord(char)
    return any(low <= code <= high for low, high in RANGES)


def _name(char: str) -> str:
    return unicodedata.name(char, f"U+{ord(char):04X}").lower()


@functools.cache
def _outline_font():
    """DejaVu Sans from matplotlib's data directory, and its character map."""
    import matplotlib
    from matplotlib import ft2font

    path = os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf")
    font = ft2font.FT2Font(path)
    return path, font.get_charmap()


@functools.cache
def _outline(char: str) -> str | None:
    """The glyph of `char` in DejaVu Sans as an SVG path in a 16-unit em box, or None without one."""
    path, charmap = _outline_font()
    if ord(char) not in charmap:
        return None
    from matplotlib.font_manager import FontProperties
    from matplotlib.path import Path
    from matplotlib.textpath import TextPath

    glyph = TextPath((0, 0), char, size=16, prop=FontProperties(fname=path))
    if not len(glyph.vertices):
        return None
    left, right = glyph.vertices[:, 0].min(), glyph.vertices[:, 0].max()
    shift = (16 - (right - left)) / 2 - left  # centred in the box
    commands = []
    # Text space has y up from the baseline; SVG has y down. The box's top is 12.5 above the
    # baseline (DejaVu's ascent at this size, about), its bottom 3.5 below.
    for points, code in glyph.iter_segments(simplify=False, curves=True):
        xy = [f"{x + shift:.2f} {12.5 - y:.2f}" for x, y in zip(points[0::2], points[1::2], strict=True)]
        if code == Path.MOVETO:
            commands.append("M" + xy[0])
        elif code == Path.LINETO:
            commands.append("L" + xy[0])
        elif code == Path.CURVE3:
            commands.append("Q" + " ".join(xy))
        elif code == Path.CURVE4:
            commands.append("C" + " ".join(xy))
        elif code == Path.CLOSEPOLY:
            commands.append("Z")
    return f'<path d="{" ".join(commands)}" fill="currentColor"/>'


def _badge(char: str) -> str:
    """The code point in a rounded box, for an emoji no font here can draw."""
    label = f"{ord(char):X}"
    width = 6 + 5.4 * len(label)
    return (
        f'<rect x="0.5" y="0.5" width="{width - 1:.1f}" height="15" rx="3" fill="#f1f3f5" '
        f'stroke="#868e96"/><text x="{width / 2:.1f}" y="11.2" text-anchor="middle" '
        f'font-family="DejaVu Sans Mono, monospace" font-size="8.5" fill="#495057">{label}</text>'
    ), width


@functools.cache
def svg(char: str) -> str:
    """The inline <svg> for one emoji."""
    name = html.escape(_name(char), quote=True)
    body = FLAIRS.get(char) or _outline(char)
    width = 16.0
    if body is None:
        body, width = _badge(char)
    return _SVG.format(width=round(width, 1), em=1.2 * width / 16, name=name, body=body)


def html_text(text) -> str:
    """str(text) escaped for HTML content, each emoji an inline drawing (module docstring)."""
    text = str(text)
    out = []
    for index, char in enumerate(text):
        if is_emoji(char):
            out.append(svg(char))
        elif char in _JOINERS and (
            (index > 0 and is_emoji(text[index - 1])) or (index + 1 < len(text) and is_emoji(text[index + 1]))
        ):
            continue
        else:
            out.append(html.escape(char, quote=True))
    return "".join(out)
