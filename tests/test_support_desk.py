"""The demo back office hears a caller the way a person would: case, spacing,
punctuation, digits said as words and a misheard letter do not change the answer, and
what it does not recognise it asks again about instead of stating a falsehood."""

from __future__ import annotations

import pytest

from agent.support_desk import SupportDesk, normalise_spoken, spoken_digits


@pytest.fixture
def desk() -> SupportDesk:
    return SupportDesk()


@pytest.mark.parametrize(
    "heard",
    ["Springfield", "springfield.", "Spring field", "SPRINGFIELD", "Springfeld", "spring-field"],
)
def test_an_area_is_found_however_it_was_heard(desk: SupportDesk, heard: str) -> None:
    assert desk.check_outage(heard).startswith("Yes, there is an outage in Springfield")


@pytest.mark.parametrize("heard", ["94107", "9 4 1 0 7", "nine four one oh seven", "941-07"])
def test_a_zip_code_is_found_however_it_was_said(desk: SupportDesk, heard: str) -> None:
    assert desk.check_outage(heard).startswith("Yes, there is an outage in 9 4 1 0 7")


@pytest.mark.parametrize("heard", ["Shelbyville", "94108", "Springdale", ""])
def test_an_unknown_area_is_confirmed_never_asserted(desk: SupportDesk, heard: str) -> None:
    reply = desk.check_outage(heard)
    assert "Did I hear that right?" in reply
    assert "no known outage" not in reply and not reply.startswith("Yes")


def test_a_zip_code_is_never_matched_approximately(desk: SupportDesk) -> None:
    # one digit off is another place, not a mishearing of this one
    assert "Did I hear that right?" in desk.check_outage("94170")


@pytest.mark.parametrize(
    "heard", ["123456", "12 34 56", "123-456", "one two three four five six", "1 2 3 4 5 6."]
)
def test_an_account_number_is_found_however_it_was_said(desk: SupportDesk, heard: str) -> None:
    assert "belongs to Diane Miller" in desk.lookup_account(heard)
    assert desk.billing_summary(heard).startswith("Your balance is 42 dollars and 50 cents")


@pytest.mark.parametrize("heard", ["123457", "12345", "my account number", ""])
def test_an_unknown_account_is_read_back_and_asked_again(desk: SupportDesk, heard: str) -> None:
    for reply in (desk.lookup_account(heard), desk.billing_summary(heard)):
        assert reply.startswith("I heard account")
        assert "again" in reply and "Diane" not in reply


def test_spoken_text_is_normalised_for_matching() -> None:
    assert normalise_spoken("Is it nine four one OH seven?") == "is it 94107"
    assert spoken_digits("one two, three") == "123"
    assert spoken_digits("one two buckle my shoe") is None
