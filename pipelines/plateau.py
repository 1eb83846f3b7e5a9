"""The plateau job (seed "LLM Queue Migration Plan"): a service's evolution over plateaus.

For each service: one **ambitions** call; then for plateau N = 1..K the
**features** at N (given the service and the features of N-1), and the
**mappings** of those features onto each mapping type, one call per type in
parallel. Every answer is JSON asked for with a schema and validated by the
pydantic models below; an invalid answer is asked for again, a bounded
number of times, telling the model what was wrong.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from actors.errors import RaygateError
from actors.options import CallLabels, CallOptions
from actors.settings import PipelineSettings
from pipelines.chain import Span, Stage, StageChain, Upstream, result_as, together
from pipelines.errors import InvalidOutput
from providers.errors import BadResponse
from providers.models import ChatMessage, ChatRequest, ChatResponse, JsonSchemaFormat

T = TypeVar("T")
Model = TypeVar("Model", bound=BaseModel)


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Service(_Strict):
    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    description: str = ""


# The bounds are also in the JSON schema the model gets, which keeps answers
# short enough to finish within the token budget (llama.cpp's grammar and
# OpenAI's structured output both enforce them); the patterns keep a small
# model's names to words and its sentences to one line, where it would
# otherwise write "{", "]\n#1:" or a timestamp.
Name = Annotated[str, Field(max_length=40, pattern=r"^[A-Za-z][A-Za-z0-9 &'/.+-]{0,39}$")]
Sentence = Annotated[str, Field(max_length=100, pattern=r"^[A-Za-z][^\n\\\"{}\[\]]{0,99}$")]


def _once(names: list[str]) -> list[str]:
    """Each name once, in the order first given (any case): small models repeat themselves,
    and a list that names one thing twice tells its reader nothing more."""
    seen: set[str] = set()
    kept = []
    for name in names:
        if (key := name.casefold().strip()) not in seen:
            seen.add(key)
            kept.append(name)
    return kept


class Feature(_Strict):
    """A feature as the job records it (and reads it back from an output file, maybe one
    that an earlier version wrote)."""

    name: str = Field(min_length=1, max_length=40)
    description: str = Field(max_length=100)


class AskedFeature(Feature):
    """A feature as a model must answer it."""

    name: Name
    description: Sentence


class FeatureSet(_Strict):
    features: list[AskedFeature] = Field(min_length=1, max_length=3)

    @field_validator("features")
    @classmethod
    def _each_once(cls, features: list[AskedFeature]) -> list[AskedFeature]:
        kept = _once([feature.name for feature in features])
        return [next(f for f in features if f.name == name) for name in kept]


class MappingSet(_Strict):
    """What a plateau's features rely on, of one mapping type (e.g. the data)."""

    items: Annotated[list[Name], AfterValidator(_once)] = Field(min_length=1, max_length=5)


@dataclass(frozen=True)
class Mappings:
    """A plateau's mappings: the names its features rely on, by mapping type."""

    by_type: dict[str, list[str]]


class Ambitions(_Strict):
    ambitions: Annotated[list[Sentence], AfterValidator(_once)] = Field(min_length=1, max_length=3)


class PlateauResult(_Strict):
    plateau: int
    features: list[Feature]
    mappings: dict[str, list[str]]


class ServiceRecord(_Strict):
    """One line of the output file. Deterministic: no timings, so parity runs compare equal."""

    service_id: str
    status: Literal["ok", "failed"]
    ambitions: list[str] = []
    plateaus: list[PlateauResult] = []
    error: str | None = None
    # The answers a fallback of the run's model gave (see providers.fallback), each as
    # "<what it answered>: <the model that answered>"; the others are the run's model's.
    fallbacks: list[str] = []


# ask(request, options) -> the response; the caller gates and records it. The job sets
# the options' labels and ``critical`` (calls on the service's critical path).
Ask = Callable[[ChatRequest, CallOptions], Awaitable[ChatResponse]]


def json_schema_of(model: type[BaseModel]) -> dict[str, object]:
    """The model's JSON schema with references inlined and titles dropped (for every backend)."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(definitions[node["$ref"].rsplit("/", 1)[-1]])
            return {key: inline(value) for key, value in node.items() if key != "title"}
        if isinstance(node, list):
            return [inline(value) for value in node]
        return node

    result: dict[str, object] = inline(schema)
    return result


@functools.cache
def answer_format(model: type[BaseModel]) -> JsonSchemaFormat:
    """How answers of ``model`` are asked for; built once per model, not per call."""
    return JsonSchemaFormat(
        name=model.__name__.lower(), json_schema=json_schema_of(model), strict=False
    )


class PlateauJob:
    def __init__(
        self, ask: Ask, settings: PipelineSettings, model: str, *, sequential: bool = False
    ) -> None:
        """``model``: the name the backend is asked for (the settings name a registry entry)."""
        self.ask = ask
        self.settings = settings
        self.model = model
        self.sequential = sequential
        self.spans: list[tuple[str, Span]] = []  # (service id, span), for tests and reports
        # By service: the answers a fallback model gave (see ServiceRecord.fallbacks).
        self._fallbacks: dict[str, list[str]] = {}

    async def run(self, service: Service) -> ServiceRecord:
        """The service's record: its results, or the error that stopped it (never raised)."""
        chain: StageChain[int] = StageChain(
            Stage("features", lambda n, up: self._features(service, n, up), chained=True),
            Stage("mappings", lambda n, up: self._mappings(service, n, up)),
        )
        plateaus = range(1, self.settings.plateaus + 1)
        try:
            ambitions, rows = await together(
                self._ambitions(service),
                chain.run(plateaus, sequential=self.sequential),
                sequential=self.sequential,
            )
        except (RaygateError, BaseExceptionGroup) as raised:
            cause = _root_cause(raised)
            if not isinstance(cause, RaygateError):
                raise
            return ServiceRecord(
                service_id=service.id,
                status="failed",
                error=str(cause),
                fallbacks=sorted(self._fallbacks.pop(service.id, [])),
            )
        finally:
            self.spans.extend((service.id, span) for span in chain.spans)
        return ServiceRecord(
            service_id=service.id,
            status="ok",
            fallbacks=sorted(self._fallbacks.pop(service.id, [])),
            ambitions=ambitions.ambitions,
            plateaus=[
                PlateauResult(
                    plateau=n,
                    features=result_as(row["features"], FeatureSet).features,
                    mappings=result_as(row["mappings"], Mappings).by_type,
                )
                for n, row in zip(plateaus, rows, strict=True)
            ],
        )

    # -- stages ---------------------------------------------------------------------

    async def _ambitions(self, service: Service) -> Ambitions:
        prompt = ambitions_prompt(service)
        return await self._structured(CallLabels("ambitions", service.id), prompt, Ambitions)

    async def _features(self, service: Service, plateau: int, upstream: Upstream) -> FeatureSet:
        previous = upstream.previous_as(FeatureSet)
        before = previous.features if previous is not None else []
        prompt = features_prompt(service, plateau, self.settings.plateaus, before)
        # The chain of features is the job's critical path: among calls of equal
        # priority, the manager grants these first (mappings can wait a round).
        labels = CallLabels("features", service.id, plateau=plateau)
        return await self._structured(labels, prompt, FeatureSet, critical=True)

    async def _mappings(self, service: Service, plateau: int, upstream: Upstream) -> Mappings:
        features = upstream.inputs_as(FeatureSet)

        async def one(kind: str) -> MappingSet:
            prompt = mappings_prompt(service, features.features, kind)
            labels = CallLabels("mappings", service.id, plateau=plateau, mapping_type=kind)
            return await self._structured(labels, prompt, MappingSet)

        kinds = self.settings.mapping_types
        results = await together(*(one(kind) for kind in kinds), sequential=self.sequential)
        return Mappings({kind: result.items for kind, result in zip(kinds, results, strict=True)})

    # -- structured answers -----------------------------------------------------------

    async def _structured(
        self, labels: CallLabels, prompt: str, model: type[Model], *, critical: bool = False
    ) -> Model:
        messages = [ChatMessage(role="user", content=prompt)]
        reason = ""
        for attempt in range(1, self.settings.output_attempts + 1):
            request = structured_request(self.model, messages, model, self.settings.max_tokens)
            try:
                options = CallOptions(
                    critical=critical,
                    cache=self.settings.cache,
                    labels=replace(labels, attempt=attempt),
                )
                response = await self.ask(request, options)
                if response.fallback_from is not None:
                    answered = f"{labels.describe()}: {response.model}"
                    self._fallbacks.setdefault(labels.service_id, []).append(answered)
                return model.model_validate(response.data)
            except ValidationError as invalid:
                reason = _first_error(invalid)
                messages += [
                    ChatMessage(role="assistant", content=json.dumps(response.data)),
                    ChatMessage(role="user", content=f"That is not valid: {reason}. Try again."),
                ]
            except BadResponse as bad:
                reason = bad.detail
        raise InvalidOutput(
            labels.describe(), labels.service_id, self.settings.output_attempts, reason
        )


# -- the prompts: the job's, and the answer-quality check's (pipelines.answers) ----------


def ambitions_prompt(service: Service) -> str:
    return (
        f"Service: {service.name}\n{service.description}\n\n"
        "List up to 3 short ambitions for how this service should evolve."
    )


def features_prompt(
    service: Service, plateau: int, plateaus: int, before: Sequence[Feature]
) -> str:
    """The features at ``plateau`` of ``plateaus``, given those at the one ``before``."""
    known = ", ".join(f.name for f in before) or "none yet"
    return (
        f"Service: {service.name}\n{service.description}\n\n"
        f"Features it already has: {known}.\n"
        f"What features could it add next (stage {plateau} of {plateaus})? Give each a name "
        "of two or three words and a sentence of at most ten words."
    )


def mappings_prompt(service: Service, features: Sequence[Feature], kind: str) -> str:
    """What ``features`` rely on, of the mapping type ``kind``."""
    listing = "\n".join(f"- {f.name}: {f.description}" for f in features)
    return (
        f"Service: {service.name}. Its features:\n{listing}\n\n"
        f"Which {kind} do these features rely on? Give up to 5, each a short noun."
    )


def structured_request(
    model: str, turns: list[ChatMessage], answer: type[BaseModel], max_tokens: int
) -> ChatRequest:
    """A request for a JSON answer of ``answer``'s schema, after a system prompt that says so."""
    system = ChatMessage(role="system", content="Answer with JSON only, matching the schema.")
    return ChatRequest(
        model=model,
        messages=(system, *turns),
        max_tokens=max_tokens,
        temperature=0.0,
        response_format=answer_format(answer),
    )


def _root_cause(raised: BaseException) -> BaseException:
    """The first error inside (nested) task-group exception groups."""
    while isinstance(raised, BaseExceptionGroup):
        raised = raised.exceptions[0]
    return raised


def _first_error(invalid: ValidationError) -> str:
    error = invalid.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or "the answer"
    return f"{where}: {error['msg']}"


def read_services(lines: Sequence[str]) -> tuple[list[Service], list[str]]:
    """Services from JSONL lines, and one message per bad line (1-based line numbers)."""
    services: list[Service] = []
    problems: list[str] = []
    seen: set[str] = set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            service = Service.model_validate_json(line)
        except ValidationError as invalid:
            problems.append(f"line {number}: {_first_error(invalid)}")
            continue
        if service.id in seen:
            problems.append(f"line {number}: service id {service.id!r} appears twice")
            continue
        seen.add(service.id)
        services.append(service)
    return services, problems
