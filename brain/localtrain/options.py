"""What a caller may ask of a fine-tune: a strict, bounded model that cannot name a file.

Everything that decides *what* is trained and *how it is judged* comes from the robot's
config and the committed OTA slot, never from a request: the base model (the committed
bundle's weights, hash-checked), the episodes (the recording root), the run directory (a
generated id under the work dir), ``min_episodes``, the gate's settings and the LoRA
hyper-parameters.  A request may only ask for *more* training than the config's floors
(``local_train.steps``, ``local_train.max_seconds``), up to the same ceilings the config
schema allows; asking for less is refused, so a token holder cannot turn the fine-tune into
a near-copy of whatever it trains from, and lowering a floor takes an edit of the config.

The Robot API validates a body against this model (wrong type, unknown field -> 422 naming
the field); the manager validates again with the config's floors as context.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

MAX_STEPS = 100_000  # the config schema's own ceiling for local_train.steps
MAX_SECONDS = 86_400.0  # and for local_train.max_seconds


class StartOptions(BaseModel):
    """``POST /api/v1/training/start`` body; ``{}`` starts a fine-tune with the config's values."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)

    resume: bool = False
    steps: Annotated[int, Field(ge=1, le=MAX_STEPS)] | None = None
    max_seconds: Annotated[float, Field(gt=0, le=MAX_SECONDS)] | None = None

    @field_validator("steps", "max_seconds")
    @classmethod
    def _not_below_floor(cls, v: float | None, info: ValidationInfo) -> float | None:
        """With the config's floors as context (the manager's check): never below them."""
        floors = info.context or {}
        floor = floors.get(info.field_name)
        if v is not None and floor is not None and v < floor:
            raise ValueError(
                f"{v} is below local_train.{info.field_name} ({floor}); a request may only ask "
                "for more training, a floor is lowered in the robot's config"
            )
        return v


def floors_of(local_train: Any) -> dict[str, float]:
    """The validation context that enforces ``local_train``'s floors."""
    return {"steps": local_train.steps, "max_seconds": local_train.max_seconds}


def parse_options(data: StartOptions | dict[str, Any] | None, local_train: Any) -> StartOptions:
    """Validate a caller's options against the model and the config's floors.

    Raises pydantic's ``ValidationError`` (the API answers 422 naming the field).
    """
    raw = data.model_dump(exclude_unset=True) if isinstance(data, StartOptions) else data
    return StartOptions.model_validate({} if raw is None else raw, context=floors_of(local_train))


def validation_text(exc: Any) -> str:
    """``field: problem; ...`` for a ValidationError (the CLI's message)."""
    parts = [f"{'.'.join(str(x) for x in e['loc']) or 'options'}: {e['msg']}" for e in exc.errors()]
    return "; ".join(parts)
