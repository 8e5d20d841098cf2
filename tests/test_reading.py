"""Reading a code out of a whole utterance: what callers say, in three languages, and what is refused.

The spoken forms are generated from the code (digits -> words), the way a
caller would say them, independently of how `engine.reading` reads them back.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.codes import ALPHAS, UnreadableCode, normalise_spoken
from engine.reading import MAX_UTTERANCE, SUPPORTED_LANGUAGES, NoCodeFound, SeveralCodesFound, read_code

# --- Saying numbers 0-99, as a caller would ---------------------------------------------------


def words(text: str) -> list[str]:
    return text.split()


EN_UNITS = words("zero one two three four five six seven eight nine")
EN_TEENS = words("ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen")
EN_TENS = words("_ _ twenty thirty forty fifty sixty seventy eighty ninety")

ES_UNITS = words("cero uno dos tres cuatro cinco seis siete ocho nueve")
ES_BELOW_30 = words(
    "diez once doce trece catorce quince dieciséis diecisiete dieciocho diecinueve veinte veintiuno "
    "veintidós veintitrés veinticuatro veinticinco veintiséis veintisiete veintiocho veintinueve"
)
ES_TENS = words("_ _ _ treinta cuarenta cincuenta sesenta setenta ochenta noventa")

FR_UNITS = words("zéro un deux trois quatre cinq six sept huit neuf")
FR_TEENS = words("dix onze douze treize quatorze quinze seize dix-sept dix-huit dix-neuf")
FR_TENS = words("_ _ vingt trente quarante cinquante soixante")

UNITS = {"en": EN_UNITS, "es": ES_UNITS, "fr": FR_UNITS}
LANGUAGES = {"en": "en-US", "es": "es-US", "fr": "fr-FR"}


def en_number(n: int) -> str:
    if n < 10:
        return EN_UNITS[n]
    if n < 20:
        return EN_TEENS[n - 10]
    tens, unit = divmod(n, 10)
    return EN_TENS[tens] + (f"-{EN_UNITS[unit]}" if unit else "")


def es_number(n: int) -> str:
    if n < 10:
        return ES_UNITS[n]
    if n < 30:
        return ES_BELOW_30[n - 10]
    tens, unit = divmod(n, 10)
    return ES_TENS[tens] + (f" y {ES_UNITS[unit]}" if unit else "")


def fr_number(n: int) -> str:
    if n < 10:
        return FR_UNITS[n]
    if n < 20:
        return FR_TEENS[n - 10]
    if n < 70:
        tens, unit = divmod(n, 10)
        if unit == 1:
            return f"{FR_TENS[tens]} et un"
        return FR_TENS[tens] + (f"-{FR_UNITS[unit]}" if unit else "")
    if n < 80:
        return "soixante et onze" if n == 71 else f"soixante-{FR_TEENS[n - 70]}"
    return "quatre-vingts" if n == 80 else f"quatre-vingt-{fr_number(n - 80)}"


NUMBER = {"en": en_number, "es": es_number, "fr": fr_number}


def say_chunk(chunk: str, language: str) -> str:
    """One or two digits as words: "4" -> "four", "48" -> "forty-eight", "07" -> "zero seven"."""
    units = UNITS[language]
    if len(chunk) == 1 or chunk[0] == "0":
        return " ".join(units[int(d)] for d in chunk)
    return NUMBER[language](int(chunk))


def needs_pause(before: str, after: str, language: str) -> bool:
    """Where a caller pauses between two chunks so they are not heard as one number.

    "forty, two" is 40 then 2 (without the pause it is 42); in French "soixante, douze" is 60
    then 12 and "zéro quatre, vingt" is 0, 4, 20 (not 72 and 80).
    """
    if len(before) == 2 and before[0] != "0" and before[1] == "0" and len(after) == 1:
        return True
    if language == "fr":
        if before == "60" and len(after) == 2 and after[0] == "1":
            return True
        lone_four = before in ("4", "04")
        if lone_four and len(after) == 2 and after[0] == "2":
            return True
    return False


def chunks_of(code: str, sizes: list[int]) -> list[str]:
    out, at = [], 0
    for size in sizes:
        out.append(code[at : at + size])
        at += size
    return out


def say(code: str, language: str, sizes: list[int], as_digits: list[bool] | None = None) -> str:
    """The code said in chunks of one or two digits, each as words (or as digits where asked)."""
    chunks = chunks_of(code, sizes)
    as_digits = as_digits or [False] * len(chunks)
    said_words = [
        chunk if digits else say_chunk(chunk, language)
        for chunk, digits in zip(chunks, as_digits, strict=True)
    ]
    said = said_words[0]
    for (before, after), word in zip(pairwise(chunks), said_words[1:], strict=True):
        said += (", " if needs_pause(before, after, language) else " ") + word
    return said


def pairs(code: str) -> list[int]:
    return [2] * (len(code) // 2) + [1] * (len(code) % 2)


def digit_by_digit(code: str, language: str, separator: str = " ") -> str:
    return separator.join(UNITS[language][int(d)] for d in code)


def without_accents(text: str) -> str:
    return "".join(ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch))


FILLERS = {
    "en": [
        ("my code is", ""),
        ("it's", ", thank you"),
        ("uh, the code is", "thanks"),
        ("I want to verify, it's", ""),
        ("okay so", "please"),
    ],
    "es": [
        ("mi código es", ""),
        ("es el", ", gracias"),
        ("eh, el código es el", "gracias"),
        ("a ver, es", "por favor"),
        ("sí, mi código es", "."),
    ],
    "fr": [
        ("mon code est", ""),
        ("c'est", ", merci"),
        ("euh, le code c'est", "merci"),
        ("alors", "voilà"),
        ("oui, mon code est le", "."),
    ],
}
OR = {"en": "or", "es": "o", "fr": "ou"}

DIGIT_SCRIPTS = {
    "full-width": 0xFF10,
    "arabic-indic": 0x0660,
    "extended-arabic-indic": 0x06F0,
    "devanagari": 0x0966,
    "bengali": 0x09E6,
    "thai": 0x0E50,
}


def in_script(code: str, zero: int) -> str:
    return "".join(chr(zero + int(d)) for d in code)


CODES = [
    "482913",
    "527194",
    "642013",
    "100700",
    "909090",
    "310417",
    "775588",
    "208060",
    "011011",
    "601219",
    "042080",
    "717199",
    "4211",
    "0455",
    "1984",
    "2020",
    "8091",
    "1111",
    "3017",
    "0000",
]

# --- The accepted table -----------------------------------------------------------------------


def accepted_rows() -> Iterator[tuple[str, str, int, str]]:
    """(language, utterance, length, code) for every generated form of every code."""
    for language in LANGUAGES:
        fillers = FILLERS[language]
        for index, code in enumerate(CODES):
            words = digit_by_digit(code, language)
            paired = say(code, language, pairs(code))
            forms = [
                words,
                digit_by_digit(code, language, ", ") + ".",
                paired,
                paired.capitalize(),
                f"{fillers[index % 5][0]} {words} {fillers[index % 5][1]}",
                f"{fillers[(index + 1) % 5][0]} {paired} {fillers[(index + 1) % 5][1]}",
                f"{fillers[(index + 2) % 5][0]} {paired} {fillers[(index + 2) % 5][1]}",
            ]
            if language != "en":
                forms += {without_accents(words), without_accents(paired)} - set(forms)
            for form in forms:
                yield language, form, len(code), code


def neutral_rows() -> Iterator[tuple[str, str, int, str]]:
    """Digits are digits in every language: typed, grouped, keypad and other scripts."""
    for index, code in enumerate(CODES):
        language = list(LANGUAGES)[index % 3]
        spaced = " ".join(code)
        forms = [
            code,
            spaced,
            "-".join(code[i : i + 3] for i in range(0, len(code), 3)),
            ", ".join(code) + ".",
            f"{code}#",
            f"*{code}#",
            f"{spaced} #",
            f"DTMF {spaced}",
            *(in_script(code, zero) for zero in DIGIT_SCRIPTS.values()),
        ]
        for form in forms:
            yield language, form, len(code), code


EXPLICIT_ACCEPTED = [
    # English, as speech-to-text writes numbers
    ("en", "six forty two zero thirteen", "642013"),
    ("en", "fifty two seventy one ninety four", "527194"),
    ("en", "nineteen", "19"),
    ("en", "nineteen eighty four", "1984"),
    ("en", "four hundred eighty two nine thirteen", "482913"),
    ("en", "four hundred eighty two nine hundred thirteen", "482913"),
    ("en", "four hundred nine hundred thirteen", "400913"),
    ("en", "four hundred and five", "405"),
    ("en", "six hundred", "600"),
    ("en", "a hundred", "100"),
    ("en", "4 hundred 82", "482"),
    ("en", "four hundred 05", "40005"),
    ("en", "2 thousand 5", "2005"),
    ("en", "four thousand 829", "4829"),
    ("en", "four thousand 8 hundred 29", "4829"),
    ("en", "twenty 1", "21"),
    ("en", "forty 8 twenty 9 13", "482913"),
    ("en", "twenty 10", "2010"),
    ("en", "four thousand eight hundred twenty nine", "4829"),
    ("en", "two thousand and five", "2005"),
    ("en", "twenty twenty one", "2021"),
    ("en", "twenty one", "21"),
    ("en", "twenty-one forty-eight", "2148"),
    ("en", "twenty, one", "201"),
    ("en", "twenty oh five", "2005"),
    ("en", "4 eight two nine 13", "482913"),
    ("en", "48 29 13", "482913"),
    ("en", "482-913", "482913"),
    ("en", "4, 8, 2.", "482"),
    ("en", "oh four double five", "0455"),
    ("en", "o four two one", "0421"),
    ("en", "nought four two one", "0421"),
    ("en", "double 5 six", "556"),
    ("en", "double oh seven", "007"),
    ("en", "triple seven two", "7772"),
    ("en", "four two, uh, one one", "4211"),
    ("en", "Four. Two. One. One.", "4211"),
    ("en", "FOUR TWO ONE ONE", "4211"),
    ("en", "two four to one", "2421"),
    ("en", "won two tree for", "1234"),
    ("en", "I want to verify, it's four two one one", "4211"),
    ("en", "send it to four two one one", "4211"),
    ("en", "send it to four two one one", "24211"),  # five expected: "to" is the first digit
    ("en", "four two one one too", "4211"),
    ("en", "the code for me is four two one one", "4211"),
    ("en", "one moment, four two one one", "4211"),
    ("en", "hold on one second... 4211", "4211"),
    ("en", "it's a 6 digit code: 482913", "482913"),
    ("en", "it's a six-digit code, four eight two nine one three", "482913"),
    ("en", "482913, I repeat, 482913", "482913"),
    ("en", "482913, 482913", "482913"),
    ("en", "four eight two nine one three. Four eight two nine one three.", "482913"),
    ("en", "I double checked, it's 482913", "482913"),
    ("en", "my code is... 482 913", "482913"),
    ("en", "the code is\n4 8 2 9 1 3\nthanks", "482913"),
    ("en", "482913 thank you", "482913"),
    ("en", "dtmf:482913#", "482913"),
    ("en", "４８２９１３", "482913"),
    ("en", "my code is ٤٨٢٩١٣", "482913"),
    ("en", "मेरा कोड ४८२९१३ है", "482913"),
    ("en", "رمزي هو٤٨٢٩١٣", "482913"),
    ("en", "e\u0301\u0301 4211", "4211"),  # stray combining accents are no letters
    # Spanish
    ("es", "cuatro cero cinco uno", "4051"),
    ("es", "cuarenta y dos diecisiete", "4217"),
    ("es", "veintiuno veintiuno", "2121"),
    ("es", "veintiún cero siete", "2107"),
    ("es", "veinte y uno treinta", "2130"),
    ("es", "cuatrocientos ochenta y dos novecientos trece", "482913"),
    ("es", "quinientas cuatro", "504"),
    ("es", "cien cero uno", "10001"),
    ("es", "ciento cinco", "105"),
    ("es", "cuatro cientos dos", "402"),
    ("es", "mil novecientos ochenta y cuatro", "1984"),
    ("es", "dos mil veinte", "2020"),
    ("es", "veintidos dieciseis", "2216"),
    ("es", "un momento, cuatro dos uno uno", "4211"),
    ("es", "tengo un código, es el cuatro dos uno uno", "4211"),
    ("es", "doble cinco seis siete", "5567"),
    ("es", "es el cuatro ocho, eh, dos nueve", "4829"),
    ("es", "mi código es 4 8 2 9 1 3, gracias", "482913"),
    ("es", "es un código de seis dígitos: 482913", "482913"),
    # French
    ("fr", "quatre zéro cinq un", "4051"),
    ("fr", "quatre zero cinq un", "4051"),
    ("fr", "quarante-deux dix-sept", "4217"),
    ("fr", "soixante-dix-sept quatre-vingt-dix-neuf vingt et un", "779921"),
    ("fr", "soixante et onze quatre-vingts", "7180"),
    ("fr", "quatre-vingts douze", "8012"),
    ("fr", "quatre-vingt-douze zéro un", "9201"),
    ("fr", "quatre vingt un quatre vingt onze", "8191"),
    ("fr", "soixante douze", "72"),
    ("fr", "soixante, douze", "6012"),
    ("fr", "vingt-et-un vingt et un", "2121"),
    ("fr", "mille neuf cent quatre-vingt-quatre", "1984"),
    ("fr", "deux cents trois", "2003"),
    ("fr", "deux cent trois", "203"),
    ("fr", "septante-sept nonante-neuf", "7799"),
    ("fr", "huitante et un", "81"),
    ("fr", "un un un un", "1111"),
    ("fr", "un instant, quatre deux un un", "4211"),
    ("fr", "j'ai un code, c'est quatre deux un un", "4211"),
    ("fr", "c'est le 4 8 2 9 1 3, merci", "482913"),
    ("fr", "euh quatre huit deux neuf", "4829"),
    ("fr", "un code à quatre chiffres : quatre deux un un", "4211"),
]


def alpha_rows() -> Iterator[tuple[str, str, int, str]]:
    yield from [
        ("en", "B 7 K Q", 4, "B7KQ"),
        ("en", "b 7 k q", 4, "B7KQ"),
        ("en", "B7KQ", 4, "B7KQ"),
        ("en", "b7kq", 4, "B7KQ"),
        ("en", "my code is B7KQ, thank you", 4, "B7KQ"),
        ("en", "My code is B 7 K Q", 4, "B7KQ"),
        ("en", "bravo seven kilo quebec", 4, "B7KQ"),
        ("en", "Bravo, 7, Kilo, Quebec.", 4, "B7KQ"),
        ("en", "B as in bravo, seven, K as in kilo, Q", 4, "B7KQ"),
        ("en", "B for boy 7 K like king Q", 4, "B7KQ"),
        ("en", "I think it's alpha bravo seven kilo", 4, "AB7K"),
        ("en", "a B 7 K", 3, "B7K"),
        ("en", "a B 7 K", 4, "AB7K"),
        ("en", "double B seven K", 4, "BB7K"),
        ("en", "forty two X-ray Z", 4, "42XZ"),
        ("en", "x ray 2 3 4", 4, "X234"),
        ("en", "OK, it's 7KQ9", 4, "7KQ9"),
        ("en", "482953", 6, "482953"),
        ("en", "four eight two nine", 4, "4829"),
        ("es", "B de Barcelona siete K Q", 4, "B7KQ"),
        ("es", "mi código es bravo siete kilo quebec", 4, "B7KQ"),
        ("es", "B como en bravo, siete, K, Q, gracias", 4, "B7KQ"),
        ("es", "a E U siete", 4, "AEU7"),
        ("es", "yankee cuarenta y dos Z", 4, "Y42Z"),
        ("fr", "B comme Bernard sept K Q", 4, "B7KQ"),
        ("fr", "c'est bravo sept kilo quebec", 4, "B7KQ"),
        ("fr", "mon code est le B 7 K Q, merci", 4, "B7KQ"),
        ("fr", "A Y soixante-dix-sept", 4, "AY77"),
    ]


ACCEPTED = [
    *accepted_rows(),
    *neutral_rows(),
    *((language, said, len(code), code) for language, said, code in EXPLICIT_ACCEPTED),
]


@pytest.mark.parametrize(("language", "said", "length", "code"), ACCEPTED)
def test_a_reading_with_one_code_gives_that_code(language: str, said: str, length: int, code: str) -> None:
    assert read_code(said, length=length, language=LANGUAGES[language]) == code


@pytest.mark.parametrize(("language", "said", "length", "code"), list(alpha_rows()))
def test_letters_are_read_when_codes_may_have_them(language: str, said: str, length: int, code: str) -> None:
    assert read_code(said, length=length, allow_alphas=True, language=LANGUAGES[language]) == code


# --- The refused table ------------------------------------------------------------------------

NONE, SEVERAL = NoCodeFound, SeveralCodesFound

EXPLICIT_REFUSED: list[tuple[str, str, int, type[UnreadableCode]]] = [
    # nothing there
    ("en", "", 6, NONE),
    ("en", "   ", 6, NONE),
    ("en", "banana", 6, NONE),
    ("en", "my code is", 6, NONE),
    ("en", "thank you", 6, NONE),
    ("en", "I want to go to the shop too", 4, NONE),
    ("en", "double", 4, NONE),
    ("en", "###", 4, NONE),
    ("en", "* #", 4, NONE),
    ("en", "the first digit is four", 4, NONE),
    ("en", "1" * (MAX_UTTERANCE + 1), 6, NONE),
    ("en", "my code is " + "four " * 80, 6, NONE),
    # one number, of the wrong length
    ("en", "four two", 6, NONE),
    ("en", "48291", 6, NONE),
    ("en", "4829134", 6, NONE),
    ("en", "one two three four five six seven", 6, NONE),
    ("en", "four hundred eighty two", 6, NONE),
    ("en", "٤٨٢٩", 6, NONE),
    ("en", "4829134#", 6, NONE),
    ("en", "482913 2nd", 6, NONE),  # "2nd" is a 2 after the code: a longer run
    # numbers, none of the expected length
    ("en", "482 and 913", 6, NONE),
    ("en", "four banana two nine", 4, NONE),
    ("en", "four two and one one three", 6, NONE),
    ("en", "48*2913", 6, NONE),
    ("es", "mi código es cuatro dos", 6, NONE),
    ("es", "gracias", 6, NONE),
    ("es", "cuatro ocho dos y nueve uno tres", 6, NONE),
    ("fr", "merci", 6, NONE),
    ("fr", "mon code est quatre deux", 6, NONE),
    ("fr", "quatre huit deux et neuf un trois", 6, NONE),
    # several codes, or a code with another number
    ("en", "482913 or 482914", 6, SEVERAL),
    ("en", "my code is 4829 and my pin is 1234", 4, SEVERAL),
    ("en", "482913 and 4829", 6, SEVERAL),
    ("en", "482913 or 4829134", 6, SEVERAL),
    ("en", "4829#1234#", 4, SEVERAL),
    ("en", "it's 482913, my phone ends in 5678", 6, SEVERAL),
    ("en", "four two one one, no wait, four two one two", 4, SEVERAL),
    ("en", "to four two one one too", 5, SEVERAL),  # 42112 or 24211: which "to" was a digit?
    ("en", "2nd try: 482913", 6, SEVERAL),
    ("en", "one more time, 482913", 6, SEVERAL),
    ("en", "I have two phones, the code is 482913", 6, SEVERAL),
    ("en", "482913 or was it 428913", 6, SEVERAL),
    ("en", "482913, 428913", 6, SEVERAL),
    ("en", "482913, 12", 6, SEVERAL),
    ("en", "4, 8, 2, 9, 1, 3, 4", 6, NONE),
    ("es", "cuatro ocho dos nueve uno tres o cuatro ocho dos nueve uno cuatro", 6, SEVERAL),
    ("es", "mi código es 4829 y mi pin es 1234", 4, SEVERAL),
    ("fr", "quatre huit deux neuf un trois ou quatre huit deux neuf un quatre", 6, SEVERAL),
    ("fr", "mon code est 4829 et mon pin est 1234", 4, SEVERAL),
]

EXPLICIT_ALPHA_REFUSED: list[tuple[str, str, int, type[UnreadableCode]]] = [
    ("en", "B 7 O K", 4, NONE),  # O is not in the alphabet, and neither is 0: not guessed
    ("en", "B 7 oh K", 4, NONE),
    ("en", "B 1 K Q", 4, NONE),
    ("en", "L 7 K Q", 4, NONE),
    ("en", "india 7 K Q", 4, NONE),
    ("en", "zero 7 K Q", 4, NONE),
    ("en", "B7K", 4, NONE),
    ("en", "B 7 K Q or B 7 K R", 4, SEVERAL),
    ("en", "my code is B7KQ and my pin is 1234", 4, SEVERAL),
    ("es", "B siete K Q o B siete K R", 4, SEVERAL),
    ("fr", "B sept K Q ou B sept K R", 4, SEVERAL),
]


def generated_refusals() -> Iterator[tuple[str, str, int, type[UnreadableCode]]]:
    """Two codes, a code with a shorter or longer number, and a code cut short, in each language."""
    for language in LANGUAGES:
        for code in CODES[:6]:
            other = code[::-1] if code[::-1] != code else "123456"
            said = say(code, language, pairs(code))
            yield language, f"{said} {OR[language]} {say(other, language, pairs(other))}", 6, SEVERAL
            yield language, f"{said} {OR[language]} {digit_by_digit(code[:4], language)}", 6, SEVERAL
            yield language, f"{said}, {OR[language]} {digit_by_digit(code + '7', language)}", 6, SEVERAL
            yield language, digit_by_digit(code[:5], language), 6, NONE
            yield language, digit_by_digit(code + "7", language), 6, NONE


REFUSED = [*EXPLICIT_REFUSED, *generated_refusals()]


@pytest.mark.parametrize(("language", "said", "length", "kind"), REFUSED)
def test_a_reading_without_exactly_one_code_is_refused_with_its_reason(
    language: str, said: str, length: int, kind: type[UnreadableCode]
) -> None:
    with pytest.raises(UnreadableCode) as refused:
        read_code(said, length=length, language=LANGUAGES[language])
    assert type(refused.value) is kind


@pytest.mark.parametrize(("language", "said", "length", "kind"), EXPLICIT_ALPHA_REFUSED)
def test_letters_outside_the_alphabet_are_not_guessed(
    language: str, said: str, length: int, kind: type[UnreadableCode]
) -> None:
    with pytest.raises(UnreadableCode) as refused:
        read_code(said, length=length, allow_alphas=True, language=LANGUAGES[language])
    assert type(refused.value) is kind


def test_both_refusals_are_unreadable_codes_and_say_no_digits() -> None:
    for said, kind in (("banana", NoCodeFound), ("4829 or 1234", SeveralCodesFound)):
        with pytest.raises(kind) as refused:
            read_code(said, length=4)
        assert isinstance(refused.value, UnreadableCode)
        assert not any(ch.isdigit() for ch in str(refused.value))


# --- What today's reader reads, the new one reads too -----------------------------------------


@pytest.mark.parametrize(
    "spoken",
    [
        "482913",
        "48 29 13",
        "482-913",
        "4, 8, 2, 9, 1, 3",
        "four eight two nine one three",
        "Four two one one",
        "oh four double five",
        "triple seven two",
        "double 5 six",
        "zero. nine",
    ],
)
def test_what_normalise_spoken_reads_is_read_the_same(spoken: str) -> None:
    code = normalise_spoken(spoken)
    assert read_code(spoken, length=len(code)) == code


# --- Arguments ----------------------------------------------------------------------------------


@pytest.mark.parametrize("tag", [*SUPPORTED_LANGUAGES, "EN-gb", "en_US", "es-MX", "fr-CA", "FR_fr"])
def test_any_tag_of_the_three_languages_is_accepted(tag: str) -> None:
    assert read_code("4 2 1 1", length=4, language=tag) == "4211"


@pytest.mark.parametrize(
    "kwargs", [{"length": 0}, {"length": 4, "language": "de-DE"}, {"length": 4, "language": ""}]
)
def test_a_length_below_one_or_another_language_is_a_programming_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError) as raised:
        read_code("4211", **kwargs)  # type: ignore[arg-type]
    assert not isinstance(raised.value, UnreadableCode)


def test_the_tables_are_as_large_as_they_say() -> None:
    accepted = len(ACCEPTED) + len(list(alpha_rows()))
    refused = len(REFUSED) + len(EXPLICIT_ALPHA_REFUSED)
    assert accepted >= 400
    assert refused >= 60


# --- Properties ---------------------------------------------------------------------------------


@st.composite
def spoken_code(
    draw: st.DrawFn, code: str | None = None, language: str | None = None
) -> tuple[str, str, str]:
    """(language, code, how it was said): in chunks of one or two, as words or digits, maybe wrapped."""
    language = language or draw(st.sampled_from(list(LANGUAGES)))
    code = code or draw(st.text("0123456789", min_size=4, max_size=20))
    sizes: list[int] = []
    while sum(sizes) < len(code):
        sizes.append(1 if len(code) - sum(sizes) == 1 else draw(st.sampled_from([1, 2])))
    as_digits = draw(st.lists(st.booleans(), min_size=len(sizes), max_size=len(sizes)))
    said = say(code, language, sizes, as_digits)
    return language, code, said


@given(spoken_code(), st.integers(0, 5))
def test_any_code_said_in_any_of_these_ways_reads_back_exactly(
    said: tuple[str, str, str], filler: int
) -> None:
    language, code, utterance = said
    if filler < 5:
        before, after = FILLERS[language][filler]
        utterance = f"{before} {utterance} {after}"
    assert read_code(utterance, length=len(code), language=LANGUAGES[language]) == code


@given(spoken_code(), st.data())
def test_a_second_different_code_of_the_same_length_is_refused(
    said: tuple[str, str, str], data: st.DataObject
) -> None:
    language, code, utterance = said
    same_length = st.text("0123456789", min_size=len(code), max_size=len(code))
    other = data.draw(same_length.filter(lambda candidate: candidate != code))
    _, _, other_said = data.draw(spoken_code(other, language))
    with pytest.raises(SeveralCodesFound):
        read_code(f"{utterance} {OR[language]} {other_said}", length=len(code), language=LANGUAGES[language])


NATO = {
    "A": "alpha",
    "B": "bravo",
    "C": "charlie",
    "D": "delta",
    "E": "echo",
    "F": "foxtrot",
    "G": "golf",
    "H": "hotel",
    "J": "juliett",
    "K": "kilo",
    "M": "mike",
    "N": "november",
    "P": "papa",
    "Q": "quebec",
    "R": "romeo",
    "S": "sierra",
    "T": "tango",
    "U": "uniform",
    "V": "victor",
    "W": "whiskey",
    "X": "x-ray",
    "Y": "yankee",
    "Z": "zulu",
}


@given(
    st.text(ALPHAS, min_size=4, max_size=12),
    st.sampled_from(list(LANGUAGES)),
    st.sampled_from(["letters", "nato", "words", "chunk"]),
)
def test_any_alphanumeric_code_reads_back_exactly(code: str, language: str, style: str) -> None:
    if style == "chunk":
        said = code
    else:
        parts = []
        for ch in code:
            if ch.isdigit():
                parts.append(ch if style == "letters" else UNITS[language][int(ch)])
            elif style == "letters" and not (language == "es" and ch == "Y"):  # Spanish "y" is "and"
                parts.append(ch)
            else:
                parts.append(NATO[ch])
        said = " ".join(parts)
    assert read_code(said, length=len(code), allow_alphas=True, language=LANGUAGES[language]) == code


@given(
    st.text(max_size=MAX_UTTERANCE + 20), st.integers(1, 20), st.booleans(), st.sampled_from(list(LANGUAGES))
)
def test_any_text_reads_as_one_code_of_the_shape_or_is_refused(
    text: str, length: int, alphas: bool, language: str
) -> None:
    try:
        code = read_code(text, length=length, allow_alphas=alphas, language=language)
    except UnreadableCode:
        return
    assert len(code) == length
    assert set(code) <= set(ALPHAS if alphas else "0123456789")


@given(st.text("0123456789", min_size=1, max_size=24), st.booleans(), st.sampled_from(list(LANGUAGES)))
def test_the_code_said_as_itself_reads_as_the_whole_reading_would(
    digits: str, alphas: bool, language: str
) -> None:
    # read_code answers a string of exactly the code's digits at once; the whole reading agrees.
    from engine import reading

    spoken = reading._language(LANGUAGES[language])
    for length in {len(digits), max(1, len(digits) - 1), len(digits) + 1}:
        try:
            expected: str | type[UnreadableCode] = reading._read(digits, length, alphas, spoken)
        except UnreadableCode as refused:
            expected = type(refused)
        try:
            got: str | type[UnreadableCode] = read_code(
                digits, length=length, allow_alphas=alphas, language=LANGUAGES[language]
            )
        except UnreadableCode as refused:
            got = type(refused)
        assert got == expected
