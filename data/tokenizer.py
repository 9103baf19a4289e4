"""A SentencePiece-style BPE tokenizer that encodes exactly like llama.cpp's "llama" (SPM) tokenizer.

Why this form. GGUF offers a few tokenizer models; we ship ours as tokenizer.ggml.model = "llama",
which llama.cpp runs through its SPM tokenizer. That algorithm has no pre-tokenizer regex and no
merge list: spaces become U+2581 "▁", the text is split into characters, and adjacent symbols are
merged greedily by vocabulary score. So a vocabulary (pieces, scores, types) is the whole tokenizer,
and this short file can reproduce llama.cpp's ids exactly; that is what lets the GGUF artifact be
checked token for token against the PyTorch pipeline. GPT-2 style BPE ("gpt2") would need a
pre-tokenizer regex and merge ranks that llama.cpp selects by pre-tokenizer name.

Layout (512 ids by default):

    0 "<unk>" (type 2 UNKNOWN)   1 "<s>" bos, 2 "</s>" eos, 3 "<pad>" (type 3 CONTROL)
    4..259 "<0x00>".."<0xFF>" byte tokens (type 6 BYTE)
    260.. one normal piece (type 1) per character of the training corpus, by code point,
          then the learned merges in the order they were learned
    "<unusedN>" (type 5 UNUSED) only if the corpus ran out of merges before vocab_size

Scores: 0.0 for every non-normal token; normal piece i has -(i - 259), so earlier merges score
higher. All scores are exact float32 values, as GGUF stores them.

Encoding (llama.cpp `llm_tokenizer_spm_session::tokenize`, with add_space_prefix = false):
replace " " with "▁"; split into characters; repeatedly merge the adjacent pair whose concatenation
is a token with the highest score (ties: leftmost); then each final symbol that is a token becomes
its id, any other symbol becomes its UTF-8 bytes as byte tokens.

One deliberate difference from llama.cpp: a literal "▁" in the input. llama.cpp cannot tell it
from an escaped space (it decodes to " "); here it is encoded as its three byte tokens and never
merged, so decode(encode(s)) == s for every str. llama.cpp would differ only on such text.

Round trip for every str also relies on one vocabulary rule that load() checks: a normal piece
longer than one character never contains "<" or ">". Every non-normal token reads "<...>", so no
merge can ever form a control or byte token's text.

Training (train()): classic BPE on words. Each text is cut into words that start at a space or a
newline ("▁will", "\\nA:"); the most frequent adjacent pair over all words is merged, ties broken
by the pair's text, until the vocabulary is full. Pieces never span words, which keeps training
fast; encoding still follows llama.cpp and may merge anything the vocabulary allows.
"""

import collections
import hashlib
import heapq
import json
import math
import operator
import struct
from collections.abc import Iterable

from common import atomic
from common.errors import InputError

FORMAT = "m8b-spm-bpe"
VERSION = 1
VOCAB_SIZE = 512

# llama.cpp token types (LLAMA_TOKEN_TYPE_*), as written to tokenizer.ggml.token_type.
NORMAL, UNKNOWN, CONTROL, UNUSED, BYTE = 1, 2, 3, 5, 6

UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 3
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]
BYTE_OFFSET = 4
FIRST_NORMAL_ID = BYTE_OFFSET + 256
SPACE = "\u2581"  # "▁"


def _special_layout() -> tuple[list[str], list[float], list[int]]:
    pieces = SPECIALS + [f"<0x{b:02X}>" for b in range(256)]
    types = [UNKNOWN, CONTROL, CONTROL, CONTROL] + [BYTE] * 256
    return pieces, [0.0] * len(pieces), types


def _is_float32(value: float) -> bool:
    return struct.unpack("<f", struct.pack("<f", value))[0] == value


class Tokenizer:
    """Pieces, scores and types (the GGUF view) plus llama.cpp's SPM encode and a lossless decode."""

    unk_id, bos_id, eos_id, pad_id = UNK_ID, BOS_ID, EOS_ID, PAD_ID

    def __init__(
        self, pieces: list[str], scores: list[float], token_types: list[int], where: str = "tokenizer"
    ):
        _validate(pieces, scores, token_types, where)
        self.pieces = list(pieces)
        self.scores = [float(s) for s in scores]
        self.token_types = list(token_types)
        self.vocab_size = len(pieces)
        # llama.cpp looks a merged text up among all tokens; the vocabulary rule (module docstring) ensures
        # that only normal pieces can be formed, so maps of the normal pieces serve both lookups.
        self._token_ids = {p: i for i, p in enumerate(pieces) if token_types[i] == NORMAL}
        self._rank = {p: -self.scores[i] for p, i in self._token_ids.items()}  # heap order: best first
        self._space_bytes = [BYTE_OFFSET + b for b in SPACE.encode("utf-8")]  # a literal "▁"
        self._decoded = [
            _piece_bytes(i, p, t) for i, (p, t) in enumerate(zip(pieces, token_types, strict=True))
        ]

    # ---- encoding -------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """llama.cpp SPM token ids of `text` (no bos/eos, no space prefix)."""
        # A literal "▁" never merges and is written as its bytes (see module docstring), so the
        # symbols on either side of it never become neighbours: the text between two of them is
        # encoded on its own, and each literal "▁" adds its byte tokens in between.
        ids: list[int] = []
        for index, part in enumerate(text.split(SPACE)):
            if index:
                ids += self._space_bytes
            if part:
                ids += self._encode_part(list(part.replace(" ", SPACE)))
        return ids

    def _encode_part(self, syms: list[str]) -> list[int]:
        """The ids of symbols `syms` (one character each, spaces already "▁", no literal "▁")."""
        n = len(syms)
        rank = self._rank
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prv = list(range(-1, n - 1))
        # Heap entries (-score, left, right, merged text): highest score first, then leftmost,
        # exactly llama.cpp's bigram comparator. The entries are distinct or equal tuples, so the
        # order they pop in does not depend on how the heap was built.
        heap = [
            (rank[merged], left, left + 1, merged)
            for left, merged in enumerate(map(operator.add, syms, syms[1:]))
            if merged in rank
        ]
        heapq.heapify(heap)
        while heap:
            _, left, right, merged = heapq.heappop(heap)
            a, b = syms[left], syms[right]
            # Stale entry: one side has merged since (symbols only ever grow, so texts must match).
            if not a or not b or a + b != merged or nxt[left] != right:
                continue
            syms[left], syms[right] = merged, ""
            before, after = prv[left], nxt[right]
            nxt[left] = after
            if after >= 0:
                prv[after] = left
                pair = merged + syms[after]
                if pair in rank:
                    heapq.heappush(heap, (rank[pair], left, after, pair))
            if before >= 0:
                pair = syms[before] + merged
                if pair in rank:
                    heapq.heappush(heap, (rank[pair], before, left, pair))

        ids: list[int] = []
        token_ids = self._token_ids
        i = 0
        while i >= 0:
            sym = syms[i]
            if sym in token_ids:
                ids.append(token_ids[sym])
            else:
                ids.extend(BYTE_OFFSET + b for b in sym.encode("utf-8", "surrogatepass"))
            i = nxt[i]
        return ids

    # ---- decoding -------------------------------------------------------------------------

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`. Control, unknown and unused tokens are skipped; "▁" in pieces is a space."""
        out = bytearray()
        for i in ids:
            i = int(i)
            if not 0 <= i < self.vocab_size:
                raise InputError(f"token id {i} is outside the vocabulary [0, {self.vocab_size})")
            out += self._decoded[i]
        try:
            return out.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            # Model output can split a character's bytes; show the damage instead of failing.
            return out.decode("utf-8", "replace")

    # ---- files ----------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """Canonical JSON: sorted keys, fixed separators, UTF-8, one trailing newline."""
        doc = {
            "format": FORMAT,
            "version": VERSION,
            "model": "llama",
            "add_space_prefix": False,
            "vocab_size": self.vocab_size,
            "pieces": self.pieces,
            "scores": self.scores,
            "token_types": self.token_types,
        }
        return (json.dumps(doc, sort_keys=True, ensure_ascii=False, separators=(",", ":")) + "\n").encode()

    @property
    def digest(self) -> str:
        """sha256 hex of the bytes save() writes (load() only accepts such canonical files)."""
        return hashlib.sha256(self.to_bytes()).hexdigest()

    def save(self, path: str) -> None:
        atomic.write_bytes(path, self.to_bytes())

    @classmethod
    def load(cls, path: str) -> "Tokenizer":
        try:
            with open(path, "rb") as handle:
                raw = handle.read()
        except FileNotFoundError:
            raise InputError(f"{path}: tokenizer file not found; make it with //data:make_toy_kd") from None
        except OSError as error:
            raise InputError(f"{path}: cannot read tokenizer: {error.strerror}") from None
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError) as error:
            # ValueError: bad UTF-8, bad JSON, a number of over 4300 digits; RecursionError: deep nesting.
            raise InputError(f"{path}: not a tokenizer JSON file ({str(error)[:200]})") from None
        if not isinstance(doc, dict):
            raise InputError(f"{path}: a tokenizer file holds a JSON object")
        if doc.get("format") != FORMAT:
            raise InputError(f"{path}: format: is {doc.get('format')!r}, expected {FORMAT!r}")
        if doc.get("version") != VERSION:
            raise InputError(f"{path}: version: is {doc.get('version')!r}, this code reads {VERSION}")
        expected = {"model", "add_space_prefix", "vocab_size", "pieces", "scores", "token_types"}
        missing = sorted(expected - set(doc))
        if missing:
            raise InputError(f"{path}: {missing[0]}: missing")
        if doc["model"] != "llama" or doc["add_space_prefix"] is not False:
            raise InputError(f"{path}: model/add_space_prefix: only model 'llama' without a space prefix")
        pieces, scores, types = doc["pieces"], doc["scores"], doc["token_types"]
        for name, value, kind in (
            ("pieces", pieces, str),
            ("scores", scores, float),
            ("token_types", types, int),
        ):
            if not isinstance(value, list) or not all(type(v) is kind for v in value):
                raise InputError(f"{path}: {name}: must be a list of {kind.__name__}")
        if doc["vocab_size"] != len(pieces):
            raise InputError(
                f"{path}: vocab_size: is {doc['vocab_size']!r} but there are {len(pieces)} pieces"
            )
        tokenizer = cls(pieces, scores, types, where=path)
        if tokenizer.to_bytes() != raw:
            raise InputError(
                f"{path}: not in canonical form (its sha256 would not be the tokenizer digest); "
                "re-save it with Tokenizer.save or regenerate it"
            )
        return tokenizer


def _piece_bytes(token_id: int, piece: str, kind: int) -> bytes:
    """What decode() writes for one token: the piece with spaces back, a raw byte, or nothing."""
    if kind == NORMAL:
        return piece.replace(SPACE, " ").encode("utf-8")
    if kind == BYTE:
        return bytes([token_id - BYTE_OFFSET])
    return b""


def _validate(pieces: list[str], scores: list[float], types: list[int], where: str) -> None:
    if not len(pieces) == len(scores) == len(types):
        raise InputError(f"{where}: pieces, scores and token_types must have the same length")
    fixed_pieces, _, fixed_types = _special_layout()
    if len(pieces) <= FIRST_NORMAL_ID:
        raise InputError(f"{where}: pieces: {len(pieces)} tokens; need more than {FIRST_NORMAL_ID}")
    for i, (want_piece, want_type) in enumerate(zip(fixed_pieces, fixed_types, strict=True)):
        if pieces[i] != want_piece or types[i] != want_type:
            raise InputError(f"{where}: pieces: id {i} must be {want_piece!r} with type {want_type}")
    seen: dict[str, int] = {}
    for i, (piece, score, kind) in enumerate(zip(pieces, scores, types, strict=True)):
        if piece in seen:
            raise InputError(f"{where}: pieces: {piece!r} appears twice (ids {seen[piece]} and {i})")
        seen[piece] = i
        if not math.isfinite(score) or not _is_float32(score):
            raise InputError(f"{where}: scores: id {i} has {score!r}; scores must be finite float32 values")
        if i < FIRST_NORMAL_ID:
            continue
        if kind == NORMAL:
            if not piece or any("\ud800" <= c <= "\udfff" for c in piece):
                raise InputError(f"{where}: pieces: id {i} {piece!r} is empty or not encodable as UTF-8")
            if len(piece) > 1 and ("<" in piece or ">" in piece):
                raise InputError(
                    f"{where}: pieces: id {i} {piece!r}: multi-character pieces may not hold < or >"
                )
        elif kind == UNUSED:
            if not (piece.startswith("<") and piece.endswith(">")):
                raise InputError(f"{where}: pieces: unused id {i} {piece!r} must read <...>")
        else:
            raise InputError(
                f"{where}: token_types: id {i} has type {kind}; ids from 260 are normal (1) or unused (5)"
            )


def _words(text: str) -> list[str]:
    """Training words: a new word starts at each space (as "▁") and newline.

    A literal "▁" or a lone surrogate only ends a word: encode() writes those as bytes anyway.
    """
    words, current = [], []
    for c in text:
        if c in (" ", "\n", SPACE) or "\ud800" <= c <= "\udfff":
            if current:
                words.append("".join(current))
            current = [SPACE] if c == " " else ["\n"] if c == "\n" else []
        else:
            current.append(c)
    if current:
        words.append("".join(current))
    return words


def train(texts: Iterable[str], vocab_size: int = VOCAB_SIZE) -> Tokenizer:
    """Learns a vocabulary from `texts` by classic BPE (see module docstring). Deterministic."""
    counts: collections.Counter[str] = collections.Counter()
    for text in texts:
        counts.update(_words(text))
    pieces, scores, types = _special_layout()
    chars = sorted({c for word in counts for c in word})
    if FIRST_NORMAL_ID + len(chars) > vocab_size:
        raise InputError(
            f"vocab_size {vocab_size} cannot hold the {len(chars)} distinct characters of the corpus "
            f"plus {FIRST_NORMAL_ID} special and byte tokens"
        )
    pieces += chars
    known = set(pieces)
    # Each distinct word once, with its count, as a list of symbols, in a fixed order.
    words = [(list(w), n) for w, n in sorted(counts.items())]
    while len(pieces) < vocab_size:
        pairs: collections.Counter[tuple[str, str]] = collections.Counter()
        for symbols, n in words:
            for a, b in zip(symbols, symbols[1:], strict=False):
                pairs[(a, b)] += n
        candidates = [(-n, a + b, a) for (a, b), n in pairs.items() if "<" not in a + b and ">" not in a + b]
        if not candidates:
            break
        _, merged, left = min(candidates)
        right = merged[len(left) :]
        if merged not in known:
            pieces.append(merged)
            known.add(merged)
        for symbols, _ in words:
            i = 0
            while i < len(symbols) - 1:
                if symbols[i] == left and symbols[i + 1] == right:
                    symbols[i : i + 2] = [merged]
                i += 1
    n_normal = len(pieces)
    # Only a tiny corpus runs out of pairs; pad so the id space keeps its promised size.
    pieces += [f"<unused{i}>" for i in range(vocab_size - n_normal)]
    types += [NORMAL] * (n_normal - FIRST_NORMAL_ID) + [UNUSED] * (vocab_size - n_normal)
    scores += [-float(i - FIRST_NORMAL_ID + 1) for i in range(FIRST_NORMAL_ID, n_normal)]
    scores += [0.0] * (vocab_size - n_normal)
    return Tokenizer(pieces, scores, types)
