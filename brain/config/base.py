"""The base every config section derives from.

A typo in a robot's config must not pass as a default: unknown keys are errors, sections are
frozen once loaded, and defaults are validated like everything else.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
