"""The public extension point: a job type is a name, how it runs, its price and its stages.

    registry = Registry()

    @registry.job_type("thumbnail", price=1, input_model=ThumbInput)
    def thumbnail(mode: str | None, input: dict) -> list[Stage]:
        return [Stage("render", render_thumb), Stage("store", store_output, kind="storage")]

Third-party packages register types through the ``genloom.job_types`` entry point group: each
entry is a callable taking the Registry.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ValidationError

from genloom.errors import InvalidInput

if TYPE_CHECKING:
    from genloom.pipelines.context import StageContext

StageFn = Callable[["StageContext"], Awaitable[None]]
#: Which events a stage emits: generic stage_*, the vision_* family, or storage_write_completed.
StageKind = Literal["stage", "vision", "storage"]
#: queued: a worker runs every stage; sync: skips the queue (pending -> running);
#: async: the last stage submits to a provider and the job waits for its callback.
RunKind = Literal["queued", "sync", "async"]


@dataclass(frozen=True)
class Stage:
    name: str
    run: StageFn
    kind: StageKind = "stage"


Plan = Callable[[str | None, dict[str, Any]], list[Stage]]


@dataclass(frozen=True)
class JobType:
    name: str
    plan: Plan
    run: RunKind = "queued"
    modes: tuple[str, ...] = ()
    price: int | Mapping[str, int] = 0
    input_model: type[BaseModel] | None = None

    def cost(self, mode: str | None) -> int:
        if isinstance(self.price, int):
            return self.price
        return int(self.price.get(mode or "", self.price.get("", 0)))


class Registry:
    """Job types by name; also the jobs service's Catalog (validate, is_sync, cost)."""

    def __init__(self, prices: Mapping[str, int] | None = None) -> None:
        self._types: dict[str, JobType] = {}
        self._prices = dict(prices or {})

    def register(self, jt: JobType) -> JobType:
        if jt.name in self._types:
            raise ValueError(f"job type {jt.name!r} is already registered")
        self._types[jt.name] = jt
        return jt

    def job_type(
        self, name: str, *, run: RunKind = "queued", modes: tuple[str, ...] = (),
        price: int | Mapping[str, int] = 0, input_model: type[BaseModel] | None = None,
    ) -> Callable[[Plan], Plan]:
        """Decorator: register ``plan`` (mode, input) -> stages as job type ``name``."""

        def deco(plan: Plan) -> Plan:
            self.register(JobType(name, plan, run, modes, price, input_model))
            return plan

        return deco

    def load_entry_points(self) -> None:
        for ep in entry_points(group="genloom.job_types"):
            ep.load()(self)

    def get(self, name: str) -> JobType:
        try:
            return self._types[name]
        except KeyError:
            known = ", ".join(sorted(self._types))
            raise InvalidInput(f"unknown job type {name!r}; known types: {known}", code="unknown_type") from None

    def names(self) -> list[str]:
        return sorted(self._types)

    # -- Catalog ---------------------------------------------------------------
    def validate(self, type_: str, mode: str | None, input: dict[str, Any]) -> None:
        jt = self.get(type_)
        if jt.modes and (mode or jt.modes[0]) not in jt.modes:
            raise InvalidInput(f"mode must be one of {', '.join(jt.modes)}", code="invalid_mode")
        if jt.input_model is not None:
            try:
                jt.input_model.model_validate(input)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"]) or "input"
                raise InvalidInput(f"input.{where}: {first['msg']}", code="invalid_input",
                                   errors=exc.errors(include_url=False, include_context=False)) from None

    def is_sync(self, type_: str) -> bool:
        return self.get(type_).run == "sync"

    def cost(self, type_: str, mode: str | None) -> int:
        if type_ in self._prices:
            return self._prices[type_]
        return self.get(type_).cost(mode)
