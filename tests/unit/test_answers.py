"""The answer-quality check's plain checks, on answers written out here."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pipelines.answers import PAYMENTS, check_record, naming_problems, prompts, repeats, says_any
from pipelines.plateau import (
    AskedFeature,
    Feature,
    FeatureSet,
    MappingSet,
    PlateauResult,
    ServiceRecord,
    features_prompt,
)
from providers.models import ChatResponse, FinishReason, Usage


def answer(text: str = "", data: object = None, *, finish: FinishReason = "stop") -> ChatResponse:
    return ChatResponse(
        text=text,
        data=data,
        finish_reason=finish,
        usage=Usage(output_tokens=12),
        latency_seconds=0.1,
        provider="openai-compatible",
        group="g",
        model="m",
    )


def check(name: str, response: ChatResponse) -> list[str]:
    [prompt] = [p for p in prompts("m") if p.name == name]
    return prompt.check(response)


def test_a_known_fact_is_found_as_a_whole_word_in_any_case() -> None:
    assert says_any("The capital of France is Paris.", "Paris")
    assert not says_any("Parisian cafes", "Paris")
    assert says_any("A week has seven days", "7", "seven")


def test_an_answer_that_echoes_the_whole_question_repeats_it_one_that_echoes_part_does_not() -> (
    None
):
    question = "What is the largest planet in our solar system?"
    assert not repeats(question, "The largest planet in our solar system is Jupiter.")
    assert repeats(question, f"{question} mendatang {question} mendatang")
    assert not repeats("Hello", "Hello! How can I help?")


def test_a_name_or_sentence_that_restates_its_prompt_repeats_it() -> None:
    prompt = features_prompt(PAYMENTS, 1, 3, [])
    # Six words of the prompt in a row, or a short text out of its instruction.
    assert repeats(prompt, "Takes card and bank payments for online orders", 6)
    assert repeats(prompt, "What features could it add", 6)
    assert not repeats(prompt, "Card and bank payments", 6)  # drawn from the service
    assert not repeats(prompt, "Card payments", 6)
    assert not repeats(prompt, "Refunds to the card within a day", 6)


def test_names_that_are_not_words_or_come_twice_are_named() -> None:
    assert naming_problems("item", ["Orders", "1", "{", "orders", "Ledger"]) == [
        "item '1' is not a word",
        "item '{' is not a word",
        "item 'orders' comes twice",
    ]


def test_a_chat_answer_that_runs_to_its_limit_and_misses_the_fact_fails_both_checks() -> None:
    rambling = answer("Hello mendatanguser Hello mendatangmodel", finish="length")

    assert check("Hello", answer("Hello! How can I help you today?")) == []
    assert check("What do bees make?", rambling) == [
        "ran to its limit (12 tokens) without stopping",
        "says none of honey",
    ]


def test_a_structured_answer_is_checked_as_it_came_not_as_the_job_keeps_it() -> None:
    data = {"items": ["Orders", "orders", "2"]}

    # The job keeps each name once; the check sees the model said one twice.
    assert MappingSet.model_validate({"items": ["Orders", "orders"]}).items == ["Orders"]
    with pytest.raises(ValidationError):
        MappingSet.model_validate(data)  # "2" is not a name
    assert check("mappings: Payments, data", answer("", data)) == [
        "does not fit its schema: String should match pattern '^[A-Za-z][A-Za-z0-9 &'/.+-]{0,39}$'"
    ]
    assert check("mappings: Payments, data", answer("", {"items": ["Orders", "orders"]})) == [
        "name 'orders' comes twice"
    ]


def test_the_jobs_names_are_words_and_its_sentences_one_line() -> None:
    with pytest.raises(ValidationError):
        AskedFeature(name="]\n#1: Refunds", description="Fast.")
    with pytest.raises(ValidationError):
        AskedFeature(name="Refunds", description="Fast.\nAnd more")
    kept = FeatureSet(
        features=[
            AskedFeature(name="Refunds", description="Pays back."),
            AskedFeature(name="refunds", description="Again."),
        ]
    )
    assert [f.description for f in kept.features] == ["Pays back."]


def record(*, features: list[Feature], data: list[str]) -> ServiceRecord:
    return ServiceRecord(
        service_id=PAYMENTS.id,
        status="ok",
        ambitions=["Pay merchants the same day"],
        plateaus=[PlateauResult(plateau=1, features=features, mappings={"data": data})],
    )


def test_a_record_that_names_things_of_its_service_passes() -> None:
    refunds = Feature(name="Card refunds", description="Gives card payments back.")

    assert check_record(PAYMENTS, record(features=[refunds], data=["Ledger"])) == []


def test_a_record_that_echoes_its_prompt_and_names_nothing_of_the_service_fails() -> None:
    echo = Feature(name="What features could it add", description="None yet.")

    assert check_record(
        PAYMENTS.model_copy(update={"description": "Sends invoices."}),
        record(features=[echo], data=["Things"]),
    ) == [
        "plateau 1 feature 'What features could it add' repeats the prompt",
        "names nothing of the service",
    ]
