"""Do a model's answers make sense? Plain checks, on prompts of the kinds raygate sends.

A small fixed set of prompts (:func:`prompts`): chat questions with a known
answer, and the plateau job's ambitions, features and mappings with their
JSON schemas, asked exactly as the job asks them. Each answer is checked
plainly, no model judging another: it contains the known fact, parses against
its schema, does not repeat the prompt, names distinct things that are words
(not "1", "2", "3"), and stops before its token limit. :func:`check_record`
applies the same checks to a record of the main job, and asks that its
answers name something of the service.

``python -m benchmarks.answers`` runs the prompts on each embedded model and
prints its pass rate and latency; the suite holds the default model to the
rate measured (tests/integration/test_answers.py).
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from actors.settings import PipelineSettings
from pipelines.plateau import (
    Ambitions,
    Feature,
    FeatureSet,
    MappingSet,
    Service,
    ServiceRecord,
    ambitions_prompt,
    features_prompt,
    mappings_prompt,
    structured_request,
)
from providers.errors import BadResponse
from providers.models import ChatMessage, ChatRequest, ChatResponse

# A problem with an answer, in words; none: it passed.
Problems = list[str]
Check = Callable[[ChatResponse], Problems]
Ask = Callable[[ChatRequest], Awaitable[ChatResponse]]

# How many of a prompt's words in a row an answer may share with it before it counts as
# repeating it (a feature may well reuse a phrase of the service's description).
REPEATED_WORDS = 6
# Chat answers are short: a model that has not stopped by then is rambling.
CHAT_MAX_TOKENS = 128
# What an answer to "Hello" says, one of them at least.
GREETINGS = ("hello", "hi", "hey", "greetings", "welcome")


@dataclass(frozen=True)
class Prompt:
    """One request of the set and the check of its answer."""

    name: str
    request: ChatRequest
    check: Check


@dataclass(frozen=True)
class Verdict:
    prompt: str
    problems: Problems
    seconds: float
    answer: str

    @property
    def passed(self) -> bool:
        return not self.problems


# -- plain checks ---------------------------------------------------------------------


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def says_any(text: str, *facts: str) -> bool:
    """Whether ``text`` says one of ``facts`` as a whole word (or words)."""
    said = f" {' '.join(words(text))} "
    return any(f" {' '.join(words(fact))} " in said for fact in facts)


def repeats(prompt: str, text: str, run: int | None = None) -> bool:
    """Whether ``text`` restates ``prompt``: ``run`` of its words in a row, or a shorter
    text all of whose words (three or more) are the prompt's last line, its instruction
    ("List up to 3 features"; a name taken from the service it describes is the model
    drawing on what it was given). None: all of the prompt's words, for a question an
    answer may well echo in part ("The capital of France is ...")."""
    asked, said = words(prompt), words(text)
    if run is not None and 3 <= len(said) < run:
        instruction = words(prompt.rsplit("\n", 1)[-1])
        return f" {' '.join(said)} " in f" {' '.join(instruction)} "
    run = len(asked) if run is None else min(run, len(asked))
    if run < 3:
        return False  # "Hello" answered with "Hello!" repeats nothing
    windows = (asked[i : i + run] for i in range(len(asked) - run + 1))
    return any(f" {' '.join(window)} " in f" {' '.join(said)} " for window in windows)


def naming_problems(what: str, names: Sequence[str]) -> Problems:
    """Names that are not words (a number, a blank) or that come twice (any case)."""
    not_words = [name for name in names if not re.search("[a-z]{2}", name.lower())]
    problems = [f"{what} {name!r} is not a word" for name in not_words]
    seen: set[str] = set()
    for name in names:
        key = " ".join(words(name))
        if key in seen:
            problems.append(f"{what} {name!r} comes twice")
        seen.add(key)
    return problems


def echo_problems(what: str, prompt: str, texts: Sequence[str]) -> Problems:
    """Texts that restate their prompt (REPEATED_WORDS of its words in a row)."""
    return [
        f"{what} {text!r} repeats the prompt"
        for text in texts
        if repeats(prompt, text, REPEATED_WORDS)
    ]


def _stopped(response: ChatResponse) -> Problems:
    if response.finish_reason == "length":
        return [f"ran to its limit ({response.usage.output_tokens} tokens) without stopping"]
    return []


def chat(model: str, question: str, *facts: str) -> Prompt:
    """A chat question whose answer must say one of ``facts``."""

    def check(response: ChatResponse) -> Problems:
        problems = _stopped(response)
        if not says_any(response.text, *facts):
            problems.append(f"says none of {', '.join(facts)}")
        if repeats(question, response.text):
            problems.append("repeats the question")
        return problems

    turns = (ChatMessage(role="user", content=question),)
    request = ChatRequest(model=model, messages=turns, max_tokens=CHAT_MAX_TOKENS, temperature=0.0)
    return Prompt(question, request, check)


# The names in an answer of each of the job's schemas, and all it says, read off the answer
# as it came (the job keeps each name once: these see what the model said).
NAMES: dict[type[BaseModel], Callable[[Any], list[str]]] = {
    Ambitions: lambda data: data["ambitions"],
    FeatureSet: lambda data: [feature["name"] for feature in data["features"]],
    MappingSet: lambda data: data["items"],
}
TEXTS: dict[type[BaseModel], Callable[[Any], list[str]]] = {
    **NAMES,
    FeatureSet: lambda data: [text for f in data["features"] for text in f.values()],
}


def structured(model: str, name: str, prompt: str, answer: type[BaseModel]) -> Prompt:
    """A plateau job's request: its answer must fit ``answer``'s schema, name distinct
    words, and not restate its prompt."""

    def check(response: ChatResponse) -> Problems:
        problems = _stopped(response)
        try:
            answer.model_validate(response.data)
        except ValidationError as invalid:
            return [*problems, f"does not fit its schema: {invalid.errors()[0]['msg']}"]
        problems += naming_problems("name", NAMES[answer](response.data))
        return problems + echo_problems("text", prompt, TEXTS[answer](response.data))

    settings = PipelineSettings()
    turns = [ChatMessage(role="user", content=prompt)]
    return Prompt(name, structured_request(model, turns, answer, settings.max_tokens), check)


# -- the set ---------------------------------------------------------------------------

PAYMENTS = Service(
    id="svc-pay",
    name="Payments",
    description="Takes card and bank payments for online orders and pays out to merchants daily.",
)
STOCK = Service(
    id="svc-stock",
    name="Inventory",
    description="Tracks stock levels across three warehouses and reorders from suppliers "
    "when stock runs low.",
)
FIRST_FEATURES = [
    Feature(name="Card payments", description="Takes card payments for online orders."),
    Feature(name="Daily payouts", description="Pays merchants once a day."),
]


def prompts(model: str) -> list[Prompt]:
    """The fixed set, asking ``model``: chat questions first, then the plateau job's stages."""
    plateaus = PipelineSettings().plateaus
    return [
        chat(model, "Hello", *GREETINGS),
        chat(model, "What is the capital of France? Answer in one sentence.", "Paris"),
        chat(model, "How many days are there in a week?", "7", "seven"),
        chat(model, "What is the largest planet in our solar system?", "Jupiter"),
        chat(model, "What color is the sky on a clear day?", "blue"),
        chat(model, "What is the opposite of hot?", "cold"),
        chat(model, "Which animal says meow?", "cat", "cats", "kitten"),
        chat(model, "What do bees make?", "honey"),
        *(
            structured(model, f"ambitions: {s.name}", ambitions_prompt(s), Ambitions)
            for s in (PAYMENTS, STOCK)
        ),
        *(
            structured(model, f"features: {s.name}, plateau {n}", prompt, FeatureSet)
            for s, n, prompt in (
                (PAYMENTS, 1, features_prompt(PAYMENTS, 1, plateaus, [])),
                (PAYMENTS, 2, features_prompt(PAYMENTS, 2, plateaus, FIRST_FEATURES)),
                (STOCK, 1, features_prompt(STOCK, 1, plateaus, [])),
            )
        ),
        *(
            structured(
                model,
                f"mappings: Payments, {kind}",
                mappings_prompt(PAYMENTS, FIRST_FEATURES, kind),
                MappingSet,
            )
            for kind in ("data", "technologies")
        ),
    ]


async def judged(ask: Ask, prompt: Prompt) -> Verdict:
    """``prompt`` asked through ``ask``, its answer checked and timed."""
    started = time.monotonic()
    try:
        response = await ask(prompt.request)
    except BadResponse as bad:  # an answer that is not the JSON asked for
        return Verdict(prompt.name, [f"not JSON: {bad.detail}"], time.monotonic() - started, "")
    seconds = time.monotonic() - started
    return Verdict(prompt.name, prompt.check(response), seconds, response.text)


# -- a record of the main job ------------------------------------------------------------


def check_record(service: Service, record: ServiceRecord) -> Problems:
    """The plain checks of a main job's record: it finished; its ambitions, features and
    mappings are distinct words that do not restate their prompts (rebuilt as the job
    asked them); and they name something of the service (a word of its name or
    description, five letters or more, told apart by its first five)."""
    if record.status != "ok":
        return [f"failed: {record.error}"]
    problems = naming_problems("ambition", record.ambitions)
    problems += echo_problems("ambition", ambitions_prompt(service), record.ambitions)
    before: list[Feature] = []
    for plateau in record.plateaus:
        n, features = plateau.plateau, plateau.features
        problems += naming_problems(f"plateau {n} feature", [f.name for f in features])
        asked = features_prompt(service, n, len(record.plateaus), before)
        texts = [text for f in features for text in (f.name, f.description)]
        problems += echo_problems(f"plateau {n} feature", asked, texts)
        for kind, items in plateau.mappings.items():
            problems += naming_problems(f"plateau {n} {kind}", items)
            asked = mappings_prompt(service, features, kind)
            problems += echo_problems(f"plateau {n} {kind}", asked, items)
        before = features
    if not _stems(f"{service.name} {service.description}") & _stems(_said(record)):
        problems.append("names nothing of the service")
    return problems


def _said(record: ServiceRecord) -> str:
    texts = [*record.ambitions]
    for plateau in record.plateaus:
        texts += [f"{f.name} {f.description}" for f in plateau.features]
        texts += [item for items in plateau.mappings.values() for item in items]
    return " ".join(texts)


def _stems(text: str) -> set[str]:
    return {word[:5] for word in words(text) if len(word) >= 5}
