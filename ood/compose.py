"""The second half of the out-of-distribution question set: questions composed from this file's own
openings, wishes and noise, none of them taken from data/ (docs/ood_questions.md).

compose(count_per_style) gives `count_per_style` questions of each style in STYLES, drawn from a
fixed seed, so the same call always gives the same questions. Each question is an everyday wish
(WISHES) put into one of this file's own frames (FRAMES, STATEMENTS, OPEN_QUESTIONS, FOREIGN) and,
for the noise styles, passed through this file's own noise (casing, punctuation, typos, filler,
emoji).
"""

import random

STYLES = ("casing", "punctuation", "typos", "filler", "statement", "non_english", "emoji", "open")
SEED = "ood-compose-v1"

# Yes/no frames; "{w}" is a wish in the first person ("my kettle survives another year").
FRAMES = [
    "Any chance {w}?",
    "Is there a way {w}?",
    "Do the stars say {w}?",
    "What do you reckon, {w}?",
    "Magic ball, {w}?",
    "Can it be that {w}?",
    "Odds are {w}, right?",
    "Be straight with me, {w}?",
    "Yes or no: {w}?",
    "Is today the day {w}?",
]
WISHES = [
    "my kettle survives another year",
    "the plumber turns up before noon",
    "my sourdough finally rises",
    "the parrot learns a new word",
    "our street party goes ahead",
    "my knee stops aching",
    "the choir picks my song",
    "my nephew likes the present",
    "the ferry crossing stays calm",
    "my old laptop boots up",
    "the allotment gives us pumpkins",
    "my cousin answers the letter",
    "the quiz team beats the regulars",
    "my chilli plants flower",
    "the landlord lowers the rent",
    "my novel gets a publisher",
    "the power cut ends soon",
    "the tortoise wakes up early",
    "my jigsaw has every piece",
    "the removal van fits everything",
]
STATEMENTS = [
    "Tell me straight whether {w}.",
    "I'd like to hear if {w}.",
    "Predict for me: {w}.",
    "Settle this: {w} or not.",
    "Give it to me plainly, {w}",
    "Let's find out if {w}.",
]
OPEN_QUESTIONS = [
    "How come {w}?",
    "What happens if {w}?",
    "Who decides whether {w}?",
    "Why would {w}?",
    "How long until {w}?",
    "What are the signs that {w}?",
]
# Whole questions in other languages: each is a yes/no question about an everyday wish.
FOREIGN = [
    "¿Crees que mi tortuga despertará pronto?",
    "¿Saldrá bien la fiesta del barrio?",
    "Est-ce que mon gâteau va réussir ?",
    "Le bateau partira-t-il à l'heure ?",
    "Wird mein Fahrrad den Winter überstehen?",
    "Bekomme ich heute noch ein Paket?",
    "Il mio gatto tornerà a casa stasera?",
    "A minha horta vai dar abóboras?",
    "Komt de loodgieter vandaag nog?",
    "Kommer bussen i tid?",
    "Czy mój laptop jeszcze się włączy?",
    "Mi kutyám megtanul ülni?",
    "Vil det snø i morgen?",
    "Bude zítra hezky?",
    "Leo nitapata zawadi?",
    "Ang aking halaman ba ay mamumulaklak?",
    "私のパンはうまく膨らみますか？",
    "我的猫今天会回家吗？",
    "Мой чайник проработает ещё год?",
    "Чи прийде сьогодні сантехнік?",
    "هل ستنجح حفلتي؟",
    "האם האוטובוס יגיע בזמן?",
    "क्या मेरा पौधा फूल देगा?",
    "제 고양이가 돌아올까요?",
    "Fırın ekmeğimi yakacak mı?",
]
FILLERS = [
    "Okay, hear me out, ",
    "Random thought while I make tea, ",
    "This has been bugging me since breakfast, ",
    "Not to be dramatic, but ",
    "Asking for a friend who is definitely not me, ",
    "Between you and me, ",
]
FILLER_TAILS = [
    ", thanks in advance",
    ", be gentle",
    " (no pressure)",
    ", I just need to know before the weekend",
    " lol",
]
EMOJI = ["🫖", "🐢", "🥐", "🎸", "🚲", "🌵", "🦜", "🧩", "🎃", "📦", "🙈", "💡", "🍋", "🚀"]
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _recase(text: str, rng: random.Random) -> str:
    how = rng.choice(("lower", "upper", "title", "alternate"))
    if how == "lower":
        return text.lower()
    if how == "upper":
        return text.upper()
    if how == "title":
        return text.title()
    return "".join(c.upper() if i % 2 else c.lower() for i, c in enumerate(text))


def _repunctuate(text: str, rng: random.Random) -> str:
    body = text.rstrip("?.!")
    return body + rng.choice(("", "", "??", "?!?", "...", " ?", "!!", "?.", "? ?"))


def _misspell(text: str, rng: random.Random) -> str:
    chars = list(text)
    for _ in range(rng.randint(1, 3)):
        letters = [i for i, c in enumerate(chars) if c.isalpha()]
        i = rng.choice(letters)
        op = rng.choice(("drop", "double", "swap", "replace"))
        if op == "drop":
            del chars[i]
        elif op == "double":
            chars.insert(i, chars[i])
        elif op == "swap" and i + 1 < len(chars):
            chars[i], chars[i + 1] = chars[i + 1], chars[i]
        else:
            chars[i] = rng.choice(LETTERS)
    return "".join(chars)


def _pad(text: str, rng: random.Random) -> str:
    heads = rng.sample(FILLERS, rng.randint(1, 3))
    return "".join(heads) + text[0].lower() + text[1:].rstrip("?") + rng.choice(FILLER_TAILS) + "?"


def _decorate(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    for _ in range(rng.randint(1, 3)):
        words.insert(rng.randint(0, len(words)), rng.choice(EMOJI) * rng.randint(1, 2))
    return " ".join(words)


def _question(style: str, rng: random.Random) -> str:
    wish = rng.choice(WISHES)
    if style == "non_english":
        return rng.choice(FOREIGN)
    if style == "statement":
        return rng.choice(STATEMENTS).format(w=wish)
    if style == "open":
        return rng.choice(OPEN_QUESTIONS).format(w=wish)
    base = rng.choice(FRAMES).format(w=wish)
    noise = {
        "casing": _recase,
        "punctuation": _repunctuate,
        "typos": _misspell,
        "filler": _pad,
        "emoji": _decorate,
    }[style]
    return noise(base, rng)


def compose(count_per_style: int) -> list[tuple[str, str]]:
    """(style, question) pairs, `count_per_style` distinct questions per style, in a fixed order."""
    rng = random.Random(SEED)
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for style in STYLES:
        made = 0
        pool_size = len(FOREIGN) if style == "non_english" else None
        if pool_size is not None and count_per_style > pool_size:
            raise ValueError(f"{style}: {count_per_style} asked, only {pool_size} questions exist")
        while made < count_per_style:
            question = _question(style, rng)
            if question not in seen:
                seen.add(question)
                out.append((style, question))
                made += 1
    return out
