"""Property tests: whatever JSON arrives, parsing gives a request or a clear refusal."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from functions.platform import MAX_DOCUMENT, BadRequest, parse_arguments, parse_request
from functions.send_mfa import SendMfaArgs
from functions.verify_mfa import VerifyMfaArgs

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=30,
)
swaig_like = st.fixed_dictionaries(
    {},
    optional={
        "call_id": json_values | st.uuids().map(str),
        "caller_id_num": json_values | st.just("+12025550143"),
        "meta_data": json_values,
        "global_data": json_values,
        "function": json_values,
    },
)


@given(swaig_like, json_values)
def test_any_body_parses_or_is_refused_with_something_to_say(body: dict[str, Any], arguments: Any) -> None:
    try:
        request = parse_request(body, arguments)
    except BadRequest as refusal:
        assert refusal.reply.fact and refusal.reply.next_step
        return
    assert isinstance(request.call_id, str) and isinstance(request.meta_data, dict)


@given(json_values)
def test_any_arguments_validate_or_name_what_is_wrong(arguments: Any) -> None:
    for model in (SendMfaArgs, VerifyMfaArgs):
        try:
            parsed = parse_arguments(model, arguments, "Try again.")
        except BadRequest as refusal:
            assert refusal.reply.fact.startswith("Nothing was done")
            continue
        assert isinstance(parsed, model)


@given(st.dictionaries(st.sampled_from(["channel", "phone_number", "extra"]), json_values))
def test_send_arguments_are_either_valid_or_refused(arguments: dict[str, Any]) -> None:
    try:
        parsed = parse_arguments(SendMfaArgs, arguments, "Try again.")
    except BadRequest:
        return
    assert parsed.channel in ("sms", "call")
    assert parsed.phone_number is None or isinstance(parsed.phone_number, str)


def test_arguments_or_meta_data_over_16_kib_are_refused_and_at_the_limit_taken() -> None:
    call = {"call_id": "3f6f8ad2-0b0e-4f4e-9b8f-6d1f1c1e2a3b", "caller_id_num": "+12025550143"}

    def text_of(size: int) -> dict[str, str]:
        return {"note": "é" * ((size - len('{"note": ""}')) // 2)}  # two UTF-8 bytes a letter

    at_limit, over = text_of(MAX_DOCUMENT), text_of(MAX_DOCUMENT + 2)
    assert parse_request({**call, "meta_data": at_limit}, {}).meta_data == at_limit
    assert parse_request(call, at_limit)
    for body, arguments in (({**call, "meta_data": over}, {}), (call, over)):
        with pytest.raises(BadRequest):
            parse_request(body, arguments)
    with pytest.raises(BadRequest):  # a lone surrogate anywhere in the body
        parse_request({**call, "global_data": {"name": "\ud800"}}, {})
