"""Reading codes back from speech, making them, and fitting them in one SMS."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from config.sms import fits_one_segment
from engine.codes import (
    ALPHAS,
    Message,
    UnreadableCode,
    code_digest,
    code_matches,
    new_code,
    normalise_spoken,
)


@pytest.mark.parametrize(
    ("spoken", "code"),
    [
        ("482913", "482913"),
        ("48 29 13", "482913"),
        ("482-913", "482913"),
        ("4, 8, 2, 9, 1, 3", "482913"),
        ("four eight two nine one three", "482913"),
        ("Four two one one", "4211"),
        ("oh four double five", "0455"),
        ("triple seven two", "7772"),
        ("double 5 six", "556"),
        ("zero. nine", "09"),
    ],
)
def test_spoken_forms_become_the_code(spoken: str, code: str) -> None:
    assert normalise_spoken(spoken) == code


@pytest.mark.parametrize("spoken", ["", "   ", "banana", "four banana", "double", "1" * 401, "٤٢١١"])
def test_what_is_not_a_code_is_refused_without_a_guess(spoken: str) -> None:
    with pytest.raises(UnreadableCode):
        normalise_spoken(spoken)


def test_letters_only_count_when_codes_may_have_them() -> None:
    assert normalise_spoken("a b 7 c", allow_alphas=True) == "AB7C"
    with pytest.raises(UnreadableCode):
        normalise_spoken("a b 7 c")


@given(st.text(alphabet="0123456789", min_size=1, max_size=20), st.sampled_from([" ", "-", ", ", "  "]))
def test_any_digits_with_any_separators_read_back_exactly(digits: str, separator: str) -> None:
    assert normalise_spoken(separator.join(digits)) == digits


@given(st.text(max_size=500))
def test_any_text_either_reads_as_digits_or_is_refused(text: str) -> None:
    try:
        code = normalise_spoken(text)
    except UnreadableCode:
        return
    assert code.isdigit() and code.isascii()


def test_codes_have_the_asked_shape() -> None:
    assert all(new_code(6).isdigit() and len(new_code(6)) == 6 for _ in range(50))
    assert set(new_code(20, allow_alphas=True)) <= set(ALPHAS)


def test_the_digest_matches_only_its_code_and_verification() -> None:
    key = b"k" * 32
    digest = code_digest(key, "v1", "123456")
    assert code_matches(key, "v1", "123456", digest)
    assert not code_matches(key, "v1", "123457", digest)
    assert not code_matches(key, "v2", "123456", digest)
    assert "123456" not in digest


def test_a_message_is_built_from_its_template_and_code_never_parsed() -> None:
    message = Message("Your code is", "4B7")
    assert message.text() == "Your code is 4B7"
    assert message.speech() == "Your code is 4 B 7"
    assert "4B7" not in repr(message)


def test_one_segment_rule_counts_gsm_and_unicode() -> None:
    def fits(message: str, code_length: int) -> bool:
        return fits_one_segment(Message(message, "0" * code_length).text())

    assert fits("Your code is", 6)
    assert fits("x" * 153, 6)
    assert not fits("x" * 154, 6)
    assert fits("Código:", 6)  # ó is not GSM-7 but the whole fits in 70
    assert not fits("Ваш код подтверждения для входа в приложение банка: пожалуйста, введите", 6)
    assert fits("^" * 76, 6) and not fits("^" * 77, 6)  # an extended character takes two septets
