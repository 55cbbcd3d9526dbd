"""KL coefficient controllers: a fixed coefficient, or the adaptive one of Ziegler et al. (2019).

The controller owns one number, the coefficient beta that multiplies the KL term
(as a reward penalty or as a loss term, see `kl`). After each step the controller
is told the KL it produced and, if adaptive, moves beta towards the value that keeps
the KL near its target. Its state is one plain float, so it goes into a checkpoint
as JSON and comes back unchanged on resume.

The KL a controller sees is whatever the caller measures; in troupe it is the
per-token KL averaged within each response, then over the batch (see
`kl.apply_kl_penalty`), so `target_kl` is a per-token quantity.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, Protocol, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: The proportional error of the adaptive controller is clipped to +-this value.
ADAPTIVE_ERROR_CLIP = 0.2


class KLController(Protocol):
    """What the controller role needs from a KL controller."""

    @property
    def kl_coef(self) -> float:
        """The current coefficient beta >= 0."""
        ...

    def update(self, current_kl: float, n_steps: int) -> None:
        """Adjusts beta after a step that measured `current_kl` over `n_steps` samples."""
        ...

    def state_dict(self) -> dict[str, float]:
        """The state to checkpoint, as plain floats."""
        ...

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Restores what `state_dict` returned."""
        ...


def _read_kl_coef(state: dict[str, float]) -> float:
    if "kl_coef" not in state:
        raise KeyError(f"KL controller state has no 'kl_coef' (keys: {sorted(state)}); pass what state_dict() returned")
    kl_coef = float(state["kl_coef"])
    if not (math.isfinite(kl_coef) and kl_coef >= 0.0):
        raise ValueError(f"KL controller state has kl_coef={kl_coef}; it must be a finite number >= 0")
    return kl_coef


class FixedKLController:
    """A constant coefficient; `update` does nothing."""

    def __init__(self, kl_coef: float) -> None:
        if not kl_coef >= 0.0:
            raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
        self._kl_coef = float(kl_coef)

    @property
    def kl_coef(self) -> float:
        """The constant coefficient."""
        return self._kl_coef

    def update(self, current_kl: float, n_steps: int) -> None:
        """Ignores the measurement: the coefficient is fixed."""

    def state_dict(self) -> dict[str, float]:
        """{"kl_coef": beta}."""
        return {"kl_coef": self._kl_coef}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Restores the coefficient from `state["kl_coef"]`."""
        self._kl_coef = _read_kl_coef(state)


class AdaptiveKLController:
    """Proportional control of beta towards a target KL (Ziegler et al., 2019, section 2.2).

    On each update with measured KL `current_kl` over `n_steps` samples:
        error = clip(current_kl / target_kl - 1, -0.2, 0.2)
        beta  = beta * (1 + error * n_steps / horizon)
        beta  = clip(beta, 0, kl_coef_max)        (upper bound only if kl_coef_max is set)
    A KL above target raises beta, below target lowers it, by at most 20% of
    n_steps / horizon per update. Beta never goes negative; once it reaches 0
    (possible only if n_steps >= 5 * horizon) it stays 0, as the rule is multiplicative.
    """

    def __init__(self, kl_coef: float, target_kl: float, horizon: int, kl_coef_max: float | None = None) -> None:
        if not kl_coef >= 0.0:
            raise ValueError(f"kl_coef (the initial coefficient) must be >= 0, got {kl_coef}")
        if not target_kl > 0.0:
            raise ValueError(f"target_kl must be > 0, got {target_kl}; use a fixed controller to disable adaptation")
        if not horizon > 0:
            raise ValueError(f"horizon must be > 0 samples, got {horizon}")
        if kl_coef_max is not None and not kl_coef_max >= kl_coef:
            raise ValueError(
                f"kl_coef_max ({kl_coef_max}) must be >= the initial kl_coef ({kl_coef}); raise it or unset it"
            )
        self._kl_coef = float(kl_coef)
        self.target_kl = float(target_kl)
        self.horizon = int(horizon)
        self.kl_coef_max = None if kl_coef_max is None else float(kl_coef_max)

    @property
    def kl_coef(self) -> float:
        """The current coefficient."""
        return self._kl_coef

    def update(self, current_kl: float, n_steps: int) -> None:
        """Moves beta towards the value that brings the KL to `target_kl`.

        Args:
            current_kl: the KL measured in the last step (same units as target_kl).
            n_steps: number of samples (responses) since the previous update.
        """
        if not math.isfinite(current_kl):
            raise ValueError(f"current_kl must be finite, got {current_kl}; check the reference and policy log-probs")
        if n_steps < 0:
            raise ValueError(f"n_steps must be >= 0 samples, got {n_steps}")
        error = min(max(current_kl / self.target_kl - 1.0, -ADAPTIVE_ERROR_CLIP), ADAPTIVE_ERROR_CLIP)
        kl_coef = max(self._kl_coef * (1.0 + error * n_steps / self.horizon), 0.0)
        if self.kl_coef_max is not None:
            kl_coef = min(kl_coef, self.kl_coef_max)
        self._kl_coef = kl_coef

    def state_dict(self) -> dict[str, float]:
        """{"kl_coef": beta}; target, horizon and cap come from the config."""
        return {"kl_coef": self._kl_coef}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Restores the coefficient from `state["kl_coef"]`, within this controller's `kl_coef_max`
        (a checkpoint saved under a higher cap resumes at the current cap)."""
        kl_coef = _read_kl_coef(state)
        self._kl_coef = kl_coef if self.kl_coef_max is None else min(kl_coef, self.kl_coef_max)


class FixedKLControllerConfig(BaseModel):
    """A constant KL coefficient."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    type: Literal["fixed"] = "fixed"
    """Selects the fixed controller."""
    kl_coef: float = Field(0.001, ge=0.0)
    """The coefficient beta, constant for the whole run."""


class AdaptiveKLControllerConfig(BaseModel):
    """The adaptive controller of Ziegler et al. (2019)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    type: Literal["adaptive"] = "adaptive"
    """Selects the adaptive controller."""
    kl_coef: float = Field(0.001, ge=0.0)
    """The initial coefficient beta."""
    target_kl: float = Field(gt=0.0)
    """The KL the controller steers towards (per token, as measured by the controller role)."""
    horizon: int = Field(10000, gt=0)
    """Samples over which a constant error e changes beta by a factor of about exp(e)."""
    kl_coef_max: float | None = Field(None, gt=0.0)
    """Upper bound on beta; None leaves it unbounded."""

    @model_validator(mode="after")
    def _kl_coef_within_cap(self) -> AdaptiveKLControllerConfig:
        if self.kl_coef_max is not None and self.kl_coef > self.kl_coef_max:
            raise ValueError(
                f"kl_coef ({self.kl_coef}) is above kl_coef_max ({self.kl_coef_max}); "
                "lower kl_coef or raise kl_coef_max"
            )
        return self


#: One of the controller configs, chosen by its `type` field.
KLControllerConfig = Annotated[Union[FixedKLControllerConfig, AdaptiveKLControllerConfig], Field(discriminator="type")]


def build_kl_controller(config: KLControllerConfig) -> KLController:
    """Creates the controller a config describes."""
    if isinstance(config, FixedKLControllerConfig):
        return FixedKLController(config.kl_coef)
    return AdaptiveKLController(
        kl_coef=config.kl_coef, target_kl=config.target_kl, horizon=config.horizon, kl_coef_max=config.kl_coef_max
    )
