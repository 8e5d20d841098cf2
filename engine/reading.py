"""Reading a one-time code out of what a caller said (or typed on the keypad).

Speech-to-text gives the whole utterance: "my code is six forty two, zero
thirteen, thank you", "mi código es cuarenta y ocho ...", "４８２９１３",
"*482913#". `read_code` finds the code in it, or says why it cannot:
`NoCodeFound` when nothing of the expected shape is there, `SeveralCodesFound`
when more than one thing could be the code. Both are `UnreadableCode`, so the
caller is asked again and no attempt is spent on a guess.

How an utterance is read (at most `MAX_UTTERANCE` characters, in one pass):

1. Normalise: NFKC (full-width forms become ASCII), every Unicode decimal
   digit (Arabic-Indic, Devanagari, ...) becomes its ASCII digit, and words
   are compared without case or accents ("zéro" = "zero").
2. Tokenise into words, the keypad's ``#`` and ``*``, pauses (``, . ; : ! ?``
   and the like) and hyphens ("twenty-one" = "twenty one"). Hesitations
   ("uh", "um", "euh") are dropped. Digits touching letters are split from
   them ("2nd" is 2, then a word), unless codes may hold letters.
3. Group consecutive number tokens into runs. Any other word breaks a run
   ("it's", "code", "merci"), and so do ``#`` and ``*``; pauses and spaces do
   not ("48, 29, 13" is one run). "and"/"y"/"et" break a run unless they join
   a compound ("four hundred and five", "cuarenta y dos", "vingt et un"). A
   number directly before a counting noun ("one moment", "a six digit code",
   "un segundo") is not part of the code and is dropped.
4. Read each run left to right into digits. Digits are taken as written
   ("48 29 13"). Number words build compounds, greedily: a tens word takes a
   following unit ("forty two" -> 42), a unit or tens takes "hundred" and
   "thousand" ("four hundred eighty two" -> 482, "six hundred" -> 600), and
   anything else starts a new number ("six forty two zero thirteen" -> 6 42 0
   13 -> 642013; "nineteen" -> 19). Zero never joins a compound ("twenty oh
   five" -> 2005), and a pause ends one ("twenty, one" -> 201). Digits may
   end a compound ("twenty 1" -> 21, "4 hundred 82" -> 482). "double" and
   "triple" repeat the next digit. French reads 70-99 the French way
   ("soixante-dix-sept", "quatre-vingt-dix-neuf"); the plural "quatre-vingts"
   or "deux cents" ends its number, as French spelling does, and hyphens say
   where "quatre" belongs ("vingt-quatre vingt" 24 20, "vingt quatre-vingts"
   20 80).
5. Filler: some number words are also ordinary words. "un"/"una"/"une" alone
   in a run are an article ("un momento"), not a 1. The English homophones
   "to", "too", "for", "fore", "won", "ate", "tree" and "oh"/"o" (and, with
   letters, "a", "i" and the like) are filler when alone, and at a run's edge
   when the run is the code only without them: "I want to verify, it's four
   two one one" -> 4211; "send it to four two one one" -> 4211 when four
   digits are expected, 24211 when five are; "to four two one one too" with
   five expected could be either, so several.
6. Decide: a run is a candidate when its reading has the expected length and
   alphabet. A run that is not, but whose pause-separated parts hold one, is
   taken part by part ("482913, 482913"). Exactly one distinct candidate and
   no other run -> the code. A candidate beside anything else (another code,
   a longer or shorter number) -> `SeveralCodesFound`. No candidate ->
   `NoCodeFound`.

With ``allow_alphas``, single letters and NATO words ("bravo") are letters,
"B as in bravo" / "B de Barcelona" / "B comme Bruno" is one B, and a token
written as a code ("7KQ9", "BKQM") is read as written. The alphabet leaves
out 0, 1, I, L and O, so a reading holding any of them is not guessed into
something else ("oh" is not turned into a letter, "O" not into a zero): it
is no candidate, and the caller is asked again. In Spanish the single words
"y" and "o" are "and" and "or", never letters.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum, auto

from engine.codes import ALPHAS, UnreadableCode

MAX_UTTERANCE = 400  # what a caller says for a code is short; anything longer is not a code
SUPPORTED_LANGUAGES = ("en", "es", "fr")  # primary subtags: any en-*, es-* or fr-* tag is read


class NoCodeFound(UnreadableCode):
    """Nothing of the expected length and alphabet could be read from what the caller said."""


class SeveralCodesFound(UnreadableCode):
    """More than one thing the caller said could be the code, or a code came with other numbers."""


class _Kind(Enum):
    LIT = auto()  # ASCII digits as written: "482913", "48"
    UNIT = auto()  # 0-9 as a word
    WHOLE = auto()  # 10-19 and words like "veintidós": a complete number below 100
    TENS = auto()  # twenty ... ninety: takes a following unit
    HUNDRED = auto()  # "hundred", "cent": multiplies what is before it
    HUNDREDS = auto()  # "doscientos": a whole hundreds value
    THOUSAND = auto()
    CONN = auto()  # "and", "y", "et": only inside a compound
    REPEAT = auto()  # "double", "triple"
    LETTER = auto()  # one letter (alphas only)
    CHUNK = auto()  # letters and digits written together: "7KQ9"
    COUNT = auto()  # a counting noun: the number before it is not the code
    PAUSE = auto()  # punctuation: ends a compound number, not a run
    BREAK = auto()  # any other word, "#", "*": ends a run


class _Filler(Enum):
    """When a number word (or letter) is an ordinary word instead."""

    NEVER = auto()
    ALONE = auto()  # alone in its run: "un" in "un momento", "tengo un código"
    AT_EDGE = auto()  # alone, or at a run's edge when needed: "to" in "send it to four two one one"


@dataclass(frozen=True, slots=True)
class _Token:
    kind: _Kind
    key: str = ""  # the word without case or accents, for matching
    text: str = ""  # digits or upper-case letters, for LIT, LETTER, CHUNK
    value: int = 0
    filler: _Filler = _Filler.NEVER
    closed: bool = False  # ends its number ("quatre-vingts", "cien")
    hyphened: bool = False  # written joined to the word before it ("vingt-deux")


@dataclass(frozen=True, slots=True)
class _Piece:
    text: str
    filler: _Filler
    after_pause: bool = False  # a comma or period came between this piece and the one before


@dataclass(frozen=True)
class _Language:
    words: Mapping[str, _Token]
    counting_nouns: frozenset[str]
    letter_links: tuple[tuple[str, ...], ...]  # "B as in bravo": the words between letter and word
    weak_letters: frozenset[str]  # single letters that are also words: filler at a run's edge
    not_letters: frozenset[str] = frozenset()  # single letters that are only words: Spanish "o" (or)
    french_tens: bool = False  # quatre-vingt(s) = 80; soixante/quatre-vingt take 10-19; dix-sept
    tens_taking_teens: frozenset[int] = field(default_factory=frozenset)


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


def _vocabulary(
    units: Mapping[str, int],
    weak_units: Mapping[str, int],
    article_units: Mapping[str, int],
    wholes: Mapping[str, int],
    tens: Mapping[str, int],
    hundred: Iterable[str],
    hundreds: Mapping[str, int],
    thousand: Iterable[str],
    connectors: Iterable[str],
    repeats: Mapping[str, int],
    closed: Iterable[str] = (),
) -> dict[str, _Token]:
    shut = set(closed)
    words: dict[str, _Token] = {}
    for word, value in units.items():
        words[word] = _Token(_Kind.UNIT, word, value=value)
    for word, value in weak_units.items():
        words[word] = _Token(_Kind.UNIT, word, value=value, filler=_Filler.AT_EDGE)
    for word, value in article_units.items():
        words[word] = _Token(_Kind.UNIT, word, value=value, filler=_Filler.ALONE)
    for word, value in wholes.items():
        words[word] = _Token(_Kind.WHOLE, word, value=value)
    for word, value in tens.items():
        words[word] = _Token(_Kind.TENS, word, value=value, closed=word in shut)
    for word in hundred:
        words[word] = _Token(_Kind.HUNDRED, word, value=100, closed=word in shut)
    for word, value in hundreds.items():
        words[word] = _Token(_Kind.HUNDREDS, word, value=value, closed=word in shut)
    for word in thousand:
        words[word] = _Token(_Kind.THOUSAND, word, value=1000)
    for word in connectors:
        words[word] = _Token(_Kind.CONN, word)
    for word, value in repeats.items():
        words[word] = _Token(_Kind.REPEAT, word, value=value)
    return words


def _both_genders(masculine: Mapping[str, int]) -> dict[str, int]:
    """Spanish hundreds agree with their noun: "doscientos", "doscientas"."""
    return {**masculine, **{word[:-2] + "as": value for word, value in masculine.items()}}


_ENGLISH = _Language(
    words=_vocabulary(
        units={
            "zero": 0,
            "nought": 0,
            "naught": 0,
            "one": 1,
            "two": 2,
            "three": 3,
            "four": 4,
            "five": 5,
            "fife": 5,
            "six": 6,
            "seven": 7,
            "eight": 8,
            "nine": 9,
            "niner": 9,
        },
        # Speech-to-text's homophones of digits, and "oh": ordinary words too.
        weak_units={
            "oh": 0,
            "o": 0,
            "won": 1,
            "to": 2,
            "too": 2,
            "tree": 3,
            "for": 4,
            "fore": 4,
            "ate": 8,
        },
        article_units={},
        wholes={
            "ten": 10,
            "eleven": 11,
            "twelve": 12,
            "thirteen": 13,
            "fourteen": 14,
            "fifteen": 15,
            "sixteen": 16,
            "seventeen": 17,
            "eighteen": 18,
            "nineteen": 19,
        },
        tens={
            "twenty": 20,
            "thirty": 30,
            "forty": 40,
            "fourty": 40,
            "fifty": 50,
            "sixty": 60,
            "seventy": 70,
            "eighty": 80,
            "ninety": 90,
        },
        hundred=("hundred",),
        hundreds={},
        thousand=("thousand",),
        connectors=("and",),
        repeats={"double": 2, "triple": 3, "treble": 3},
    ),
    counting_nouns=_words(
        "moment moments sec secs second seconds minute minutes digit digits character characters "
        "letter letters numbers times"
    ),
    letter_links=(("as", "in"), ("for",), ("like",), ("as",)),
    weak_letters=frozenset("aio"),
)

_SPANISH = _Language(
    words=_vocabulary(
        units={
            "cero": 0,
            "uno": 1,
            "dos": 2,
            "tres": 3,
            "cuatro": 4,
            "cinco": 5,
            "seis": 6,
            "siete": 7,
            "ocho": 8,
            "nueve": 9,
        },
        weak_units={},
        # Also "a": "un momento", "tengo un código". Right before a digit it is a digit.
        article_units={"un": 1, "una": 1},
        wholes={
            "diez": 10,
            "once": 11,
            "doce": 12,
            "trece": 13,
            "catorce": 14,
            "quince": 15,
            "dieciseis": 16,
            "diecisiete": 17,
            "dieciocho": 18,
            "diecinueve": 19,
            "veintiuno": 21,
            "veintiun": 21,
            "veintiuna": 21,
            "veintidos": 22,
            "veintitres": 23,
            "veinticuatro": 24,
            "veinticinco": 25,
            "veintiseis": 26,
            "veintisiete": 27,
            "veintiocho": 28,
            "veintinueve": 29,
        },
        tens={
            "veinte": 20,
            "treinta": 30,
            "cuarenta": 40,
            "cincuenta": 50,
            "sesenta": 60,
            "setenta": 70,
            "ochenta": 80,
            "noventa": 90,
        },
        hundred=("cientos",),  # "cuatro cientos", as speech-to-text sometimes splits it
        hundreds={
            "cien": 100,
            "ciento": 100,
            **_both_genders(
                {
                    "doscientos": 200,
                    "trescientos": 300,
                    "cuatrocientos": 400,
                    "quinientos": 500,
                    "seiscientos": 600,
                    "setecientos": 700,
                    "ochocientos": 800,
                    "novecientos": 900,
                }
            ),
        },
        thousand=("mil",),
        connectors=("y",),
        repeats={"doble": 2, "triple": 3},
        closed=("cien",),
    ),
    counting_nouns=_words(
        "momento momentito segundo segundos segundito minuto minutos digito digitos cifra cifras "
        "caracter caracteres letra letras numeros veces"
    ),
    letter_links=(("como", "en"), ("de",), ("como",)),
    weak_letters=frozenset("aeiu"),
    not_letters=frozenset("o"),
)

_FRENCH = _Language(
    words=_vocabulary(
        units={
            "zero": 0,
            "deux": 2,
            "trois": 3,
            "quatre": 4,
            "cinq": 5,
            "six": 6,
            "sept": 7,
            "huit": 8,
            "neuf": 9,
        },
        weak_units={},
        # Also "a": "un instant", "j'ai un code". Right before a digit it is a digit.
        article_units={"un": 1, "une": 1},
        wholes={
            "dix": 10,
            "onze": 11,
            "douze": 12,
            "treize": 13,
            "quatorze": 14,
            "quinze": 15,
            "seize": 16,
        },
        tens={
            "vingt": 20,
            "vingts": 20,
            "trente": 30,
            "quarante": 40,
            "cinquante": 50,
            "soixante": 60,
            "septante": 70,
            "huitante": 80,
            "octante": 80,
            "nonante": 90,
        },
        hundred=("cent", "cents"),
        hundreds={},
        thousand=("mille", "mil"),
        connectors=("et",),
        repeats={"double": 2, "triple": 3},
        closed=("vingts", "cents"),
    ),
    counting_nouns=_words(
        "instant instants moment moments seconde secondes minute minutes chiffre chiffres "
        "caractere caracteres lettre lettres numeros fois"
    ),
    letter_links=(("comme", "dans"), ("comme",)),
    weak_letters=frozenset("ay"),
    french_tens=True,
    tens_taking_teens=frozenset({60, 80}),
)

_LANGUAGES = dict(zip(SUPPORTED_LANGUAGES, (_ENGLISH, _SPANISH, _FRENCH), strict=True))

# Said while thinking, in any of the three languages: dropped, so they never break a run.
_HESITATIONS = _words("uh uhm um umm er erm hm hmm mm mmm ah eh ehm em euh heu hum bah ben")

_NATO = {
    "alpha": "A",
    "alfa": "A",
    "bravo": "B",
    "charlie": "C",
    "delta": "D",
    "echo": "E",
    "foxtrot": "F",
    "golf": "G",
    "hotel": "H",
    "india": "I",
    "juliet": "J",
    "juliett": "J",
    "kilo": "K",
    "lima": "L",
    "mike": "M",
    "november": "N",
    "oscar": "O",
    "papa": "P",
    "quebec": "Q",
    "romeo": "R",
    "sierra": "S",
    "tango": "T",
    "uniform": "U",
    "victor": "V",
    "whiskey": "W",
    "whisky": "W",
    "xray": "X",
    "yankee": "Y",
    "zulu": "Z",
}

_XRAY = re.compile(r"\bx[\s\-‐‑]?ray\b", re.IGNORECASE)
_TOKEN = re.compile(
    r"(?P<word>[^\W_]+(?:['’][^\W_]+)*)"  # words and numbers; "it's" and "c'est" stay whole
    r"|(?P<keypad>[#*])"  # the keypad's terminator and prefix
    r"|(?P<joiner>[-‐‑_'’])"  # "twenty-one", "quatre-vingt-dix"
    r"|(?P<pause>\S)"  # anything else: commas, periods, dashes
)
_DIGITS_OR_NOT = re.compile(r"\d+|\D+")
_NUMBER_WORDS = frozenset(
    {_Kind.UNIT, _Kind.WHOLE, _Kind.TENS, _Kind.HUNDRED, _Kind.HUNDREDS, _Kind.THOUSAND}
)
_PAUSE = _Token(_Kind.PAUSE)
_KEYPAD = _Token(_Kind.BREAK, "#")
_END = _Token(_Kind.BREAK)


def _language(tag: str) -> _Language:
    primary = tag.replace("_", "-").split("-", 1)[0].strip().lower()
    try:
        return _LANGUAGES[primary]
    except KeyError:
        raise ValueError(f"unsupported language {tag!r}: codes are read in en, es or fr") from None


def _ascii_digits(text: str) -> str:
    """NFKC, then every decimal digit of any script as its ASCII digit."""
    text = unicodedata.normalize("NFKC", text)
    return "".join(str(unicodedata.decimal(ch)) if ch.isdecimal() and not ch.isascii() else ch for ch in text)


def _key(word: str) -> str:
    decomposed = unicodedata.normalize("NFKD", word.casefold().replace("’", "'"))
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def _classify(word: str, language: _Language, alphas: bool) -> _Token | None:
    """The token a word is, or None for a hesitation."""
    key = _key(word)
    if word.isascii() and word.isdigit():
        return _Token(_Kind.LIT, key, text=word)
    known = language.words.get(key)
    if known is not None:
        return known
    if key in _HESITATIONS:
        return None
    if key in language.counting_nouns:
        return _Token(_Kind.COUNT, key)
    if alphas:
        if len(key) == 1 and key in string.ascii_lowercase and key not in language.not_letters:
            filler = _Filler.AT_EDGE if key in language.weak_letters else _Filler.NEVER
            return _Token(_Kind.LETTER, key, text=key.upper(), filler=filler)
        if key in _NATO:
            return _Token(_Kind.LETTER, key, text=_NATO[key])
        # "7KQ9" and "BKQM" are written as a code; "OK", "ID" and "PIN" are words, since a code
        # never holds I, L or O.
        has_digit = any(ch.isdigit() for ch in word)
        capitals = len(word) > 1 and word.isupper() and set(word) <= set(ALPHAS)
        if word.isascii() and word.isalnum() and (has_digit or capitals):
            return _Token(_Kind.CHUNK, key, text=word.upper())
    return _Token(_Kind.BREAK, key)


def _tokens(utterance: str, language: _Language, alphas: bool) -> list[_Token]:
    text = _XRAY.sub("xray", _ascii_digits(utterance))
    tokens: list[_Token] = []
    hyphen_at = -1  # where the word after a hyphen starts, when the hyphen touches the word before
    for match in _TOKEN.finditer(text):
        if match.lastgroup == "joiner" and tokens and text[match.start() - 1 : match.start()].isalnum():
            hyphen_at = match.end()
        elif match.lastgroup == "keypad":
            tokens.append(_KEYPAD)
        elif match.lastgroup == "pause":
            tokens.append(_PAUSE)
        elif match.lastgroup == "word":
            word = match.group()
            # Digits touching letters are read apart ("2nd" is 2 and "nd"), except a code
            # written as one token when codes may hold letters ("7KQ9").
            split = any(ch.isdigit() for ch in word) and not (alphas and word.isascii())
            for part in _DIGITS_OR_NOT.findall(word) if split else (word,):
                token = _classify(part, language, alphas)
                if token is not None:
                    tokens.append(replace(token, hyphened=True) if match.start() == hyphen_at else token)
    return tokens


class _Reader:
    """Reads one utterance's tokens into runs of pieces, left to right."""

    def __init__(self, tokens: Sequence[_Token], language: _Language) -> None:
        self.tokens = tokens
        self.language = language

    def _kind_at(self, index: int) -> _Kind | None:
        return self.tokens[index].kind if index < len(self.tokens) else None

    def _after_connector(self, index: int) -> int:
        return index + 1 if self._kind_at(index) is _Kind.CONN else index

    def _below_hundred(self, index: int) -> tuple[int, int, bool] | None:
        """A number 0-99 from ``index``: its value, the next index, and whether it is closed."""
        if index >= len(self.tokens):
            return None
        token = self.tokens[index]
        following = self.tokens[index + 1] if index + 1 < len(self.tokens) else _END
        french = self.language.french_tens
        if token.kind is _Kind.UNIT:
            if french and token.value == 4 and following.kind is _Kind.TENS and following.value == 20:
                return self._tens(index + 2, 80, following.closed)  # quatre-vingt(s)
            return token.value, index + 1, False
        if token.kind is _Kind.WHOLE:
            teen = following.kind is _Kind.UNIT and 7 <= following.value <= 9
            if french and token.value == 10 and teen:
                return 10 + following.value, index + 2, False  # dix-sept, dix-huit, dix-neuf
            return token.value, index + 1, False
        if token.kind is _Kind.TENS:
            return self._tens(index + 1, token.value, token.closed)
        small = len(token.text) <= 2 and not token.text.startswith("0")
        if token.kind is _Kind.LIT and small and self._kind_at(index + 1) in (_Kind.HUNDRED, _Kind.THOUSAND):
            return int(token.text), index + 1, False  # "4 hundred", "48 thousand"
        return None

    def _starts_eighty(self, index: int) -> bool:
        """Whether the French four at ``index`` is the start of quatre-vingt(s) rather than a unit.

        "vingt quatre-vingts" is 20 80 and "vingt-quatre vingt" is 24 20: the plural "vingts" and
        the hyphens say which; with neither, "vingt quatre vingt" is read as 24 20.
        """
        if not self.language.french_tens or self.tokens[index].value != 4 or index + 1 >= len(self.tokens):
            return False
        four, following = self.tokens[index], self.tokens[index + 1]
        if following.kind is not _Kind.TENS or following.value != 20:
            return False
        return following.closed or (following.hyphened and not four.hyphened)

    def _tens(self, index: int, base: int, closed: bool) -> tuple[int, int, bool]:
        """A tens word's value with the unit (or, in French, the 10-19) that follows it."""
        if closed:
            return base, index, True
        after = self._after_connector(index)
        if after < len(self.tokens):
            token = self.tokens[after]
            if token.kind is _Kind.UNIT and 1 <= token.value <= 9 and not self._starts_eighty(after):
                return base + token.value, after + 1, False
            unit = self._small_literal(after, 9)
            if unit is not None and unit[0] >= 1:
                return base + unit[0], unit[1], False
            if token.kind is _Kind.WHOLE and base in self.language.tens_taking_teens:
                teen = self._below_hundred(after)
                if teen is not None and 10 <= teen[0] <= 19:
                    return base + teen[0], teen[1], False  # soixante-dix-sept, quatre-vingt-onze
        return base, index, False

    def _small_literal(self, index: int, most: int) -> tuple[int, int, bool] | None:
        """Digits up to ``most`` that end a compound: "4 hundred 82" is 482, "twenty 1" 21.

        Not with a leading zero ("four hundred 05" is 400 then 05), nor before a multiplier.
        """
        multiplied = self._kind_at(index + 1) in (_Kind.HUNDRED, _Kind.THOUSAND)
        if self._kind_at(index) is not _Kind.LIT or multiplied:
            return None
        digits = self.tokens[index].text
        if digits.startswith("0") or int(digits) > most:
            return None
        return int(digits), index + 1, False

    def _below_thousand(self, index: int) -> tuple[int, int, bool] | None:
        """A number 0-999 from ``index``, like `_below_hundred`."""
        if index >= len(self.tokens):
            return None
        token = self.tokens[index]
        if token.kind in (_Kind.HUNDRED, _Kind.HUNDREDS):
            hundreds, after, closed = token.value, index + 1, token.closed
        else:
            head = self._below_hundred(index)
            if head is None:
                return None
            value, after, closed = head
            if self._kind_at(after) is not _Kind.HUNDRED or closed or not 1 <= value <= 99:
                return head
            hundreds, closed = value * 100, self.tokens[after].closed
            after += 1
        if closed:
            return hundreds, after, True
        rest_at = self._after_connector(after)
        rest = self._small_literal(rest_at, 99) or self._below_hundred(rest_at)
        # "four hundred nine hundred thirteen": the nine starts the next number.
        if rest is not None and rest[0] >= 1 and self._kind_at(rest[1]) is not _Kind.HUNDRED:
            return hundreds + rest[0], rest[1], rest[2]
        return hundreds, after, False

    def _number(self, index: int) -> tuple[str, int] | None:
        """A whole number from ``index`` as digits, and the next index; None if none starts there."""
        head = self._below_thousand(index)
        if head is None:
            if self.tokens[index].kind is not _Kind.THOUSAND:
                return None
            head = (1, index, False)  # "mil", "mille": one thousand
        value, after, closed = head
        if self._kind_at(after) is _Kind.THOUSAND and not closed and value >= 1:
            value, after = value * 1000, after + 1
            rest_at = self._after_connector(after)
            rest = self._below_thousand(rest_at) or self._small_literal(rest_at, 999)
            if rest is not None and rest[0] >= 1 and self._kind_at(rest[1]) is not _Kind.THOUSAND:
                value, after = value + rest[0], rest[1]
        return str(value), after

    def _letter_link(self, index: int) -> int | None:
        """The index after "B as in bravo" / "B de Barcelona" starting at ``index``, if it is one."""
        letter = self.tokens[index].text.lower()
        for link in self.language.letter_links:
            word_at = index + 1 + len(link)
            if word_at >= len(self.tokens):
                continue
            between = tuple(token.key for token in self.tokens[index + 1 : word_at])
            if between == link and self.tokens[word_at].key[:1] == letter:
                return word_at + 1
        return None

    def _piece(self, index: int) -> tuple[_Piece | None, int]:
        """The piece of a code at ``index`` (None for a word that breaks a run), and the next index."""
        token = self.tokens[index]
        if token.kind is _Kind.LETTER and len(token.text) == 1 and (linked := self._letter_link(index)):
            return _Piece(token.text, _Filler.NEVER), linked
        if token.kind in _NUMBER_WORDS or token.kind is _Kind.LIT:
            number = self._number(index)
            if number is not None:
                text, after = number
                return _Piece(text, token.filler if after == index + 1 else _Filler.NEVER), after
            return _Piece(token.text, _Filler.NEVER), index + 1
        if token.kind is _Kind.REPEAT and self._kind_at(index + 1) in (_Kind.UNIT, _Kind.LIT, _Kind.LETTER):
            target = self.tokens[index + 1]
            text = target.text or str(target.value)
            return _Piece(text[0] * token.value + text[1:], _Filler.NEVER), index + 2
        if token.kind in (_Kind.LETTER, _Kind.CHUNK):
            return _Piece(token.text, token.filler), index + 1
        return None, index + 1

    def runs(self) -> list[list[_Piece]]:
        """The runs of pieces: consecutive number (or letter) pieces, split by other words."""
        runs: list[list[_Piece]] = []
        run: list[_Piece] = []
        index = 0
        paused = False
        while index < len(self.tokens):
            if self.tokens[index].kind is _Kind.PAUSE:
                index, paused = index + 1, True
                continue
            piece, after = self._piece(index)
            if piece is None:
                runs.append(run)
                run = []
            elif self._kind_at(after) is not _Kind.COUNT:  # "one moment", "a six digit code"
                run.append(replace(piece, after_pause=paused and bool(run)))
            index, paused = after, False
        runs.append(run)
        return [run for run in runs if run]


def _readings(run: Sequence[_Piece], length: int, alphabet: str) -> set[str] | None:
    """The run's readings of the expected shape, dropping filler words at its edges only if needed.

    None when the run is only filler words and not the code: "to" in "I want to verify" is no
    number at all, while "un un un un" (French for 1111) is a code.
    """

    def fits(start: int, stop: int) -> str | None:
        text = "".join(piece.text for piece in run[start:stop])
        return text if len(text) == length and all(ch in alphabet for ch in text) else None

    end = len(run)
    if all(piece.filler is not _Filler.NEVER for piece in run):
        whole = fits(0, end)
        return {whole} if whole else None
    kept = [index for index, piece in enumerate(run) if piece.filler is not _Filler.AT_EDGE]
    first, last = kept[0], kept[-1] + 1
    for tier in (((0, end),), ((first, end), (0, last)), ((first, last),)):
        valid = {text for start, stop in tier if (text := fits(start, stop))}
        if valid:
            return valid
    return set()


def _parts(run: list[_Piece], length: int, alphabet: str) -> list[list[_Piece]]:
    """The run, or its pause-separated parts when the whole is not the code but a part is.

    "48, 29, 13" is one code; "482913, 482913" is one code said twice, and "482913, 12" a code
    with another number.
    """
    if _readings(run, length, alphabet) != set():
        return [run]
    parts: list[list[_Piece]] = []
    for piece in run:
        if piece.after_pause or not parts:
            parts.append([])
        parts[-1].append(piece)
    return parts if any(_readings(part, length, alphabet) for part in parts) else [run]


def read_code(utterance: str, *, length: int, allow_alphas: bool = False, language: str = "en-US") -> str:
    """The code in what a caller said or typed, in ``language`` (any en, es or fr tag).

    Returns the code as digits (and, with ``allow_alphas``, upper-case letters
    of `ALPHAS`). Raises `NoCodeFound` when no reading of ``length`` characters
    is there, `SeveralCodesFound` when more than one is, or when the one comes
    with other numbers; ValueError for a length below 1 or another language.
    """
    if length < 1:
        raise ValueError("a code has at least one character")
    spoken = _language(language)
    if len(utterance) > MAX_UTTERANCE:
        raise NoCodeFound("too long to be a code")
    if not allow_alphas and len(utterance) == length and utterance.isascii() and utterance.isdigit():
        return utterance  # the code itself, typed or transcribed: what `_read` finds in it, sooner
    return _read(utterance, length, allow_alphas, spoken)


def _read(utterance: str, length: int, allow_alphas: bool, spoken: _Language) -> str:
    alphabet = ALPHAS if allow_alphas else string.digits
    found: set[str] = set()
    others = 0
    for run in _Reader(_tokens(utterance, spoken, allow_alphas), spoken).runs():
        for part in _parts(run, length, alphabet):
            readings = _readings(part, length, alphabet)
            if readings is not None:
                found |= readings
                others += not readings
    if len(found) == 1 and not others:
        return found.pop()
    if found:
        raise SeveralCodesFound("more than one thing said could be the code")
    raise NoCodeFound("no code of the expected shape was said")
