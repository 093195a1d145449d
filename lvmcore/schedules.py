"""Schedules of a hyper-parameter over training steps, e.g. the Gumbel-Softmax temperature.

A schedule is a callable ``schedule(step) -> float`` of the global step (counted from 0) with a
``config()`` dict that ``make_schedule`` turns back into the same schedule.

- ``ConstantSchedule(value)``.
- ``ExponentialDecay(start, rate, floor, every=1)``:
  :math:`\\tau_t = \\max(\\tau_{min}, \\tau_0 e^{-r\\,t'})` with :math:`t' = \\mathrm{every}
  \\lfloor t/\\mathrm{every} \\rfloor` (the value is updated every ``every`` steps), the
  annealing schedule of Jang et al. (2017, sec. 4: :math:`\\tau = \\max(0.5, e^{-rt})`,
  r in {1e-5, 1e-4}, updated every N in {500, 1000} steps).

``temperature_schedule(tau, tau_min, tau_decay, every)`` builds either from the flags of
``lvmcore train --model catvae``.

References
----------
Jang, Gu & Poole, "Categorical Reparameterization with Gumbel-Softmax", ICLR 2017.
"""

import math

from ._validation import check_param
from .exceptions import InvalidParameterError

__all__ = ["ConstantSchedule", "ExponentialDecay", "temperature_schedule", "make_schedule"]


class ConstantSchedule:
    """``value`` at every step.

    Parameters
    ----------
    value : float
        Must lie in (0, inf) (a temperature); named ``name`` in messages.
    """

    def __init__(self, value, *, name="tau"):
        self.name = name
        self.value = check_param(value, name, "ConstantSchedule", low=0)

    def __call__(self, step):
        return self.value

    def config(self):
        return dict(kind="constant", value=self.value)

    def __repr__(self):
        return f"ConstantSchedule({self.value})"


class ExponentialDecay:
    """:math:`\\max(\\mathrm{floor}, \\mathrm{start}\\; e^{-\\mathrm{rate}\\cdot t'})`,
    :math:`t' = \\mathrm{every}\\lfloor t / \\mathrm{every}\\rfloor`.

    Parameters
    ----------
    start : float in (0, inf)
        The value at step 0 (:math:`\\tau_0`).
    rate : float in [0, inf)
        r, per step.
    floor : float in (0, start]
        :math:`\\tau_{min}`, reached at step :math:`\\log(\\tau_0/\\tau_{min})/r`.
    every : int >= 1
        Steps between updates of the value.
    """

    def __init__(self, start, rate, floor, every=1, *, name="tau"):
        f = "ExponentialDecay"
        self.name = name
        self.start = check_param(start, name, f, low=0)
        self.rate = check_param(rate, f"{name}_decay", f, low=0, low_inclusive=True)
        self.floor = check_param(floor, f"{name}_min", f, low=0)
        if self.floor > self.start:
            raise InvalidParameterError(
                f"The '{name}_min' parameter of {f} must be a float in (0, {self.start}] (at "
                f"most the starting value {name}={self.start}). Got {self.floor!r} instead."
            )
        self.every = check_param(every, f"{name}_every", f, kind="int", low=1, low_inclusive=True)

    def __call__(self, step):
        t = self.every * (int(step) // self.every)
        return max(self.floor, self.start * math.exp(-self.rate * t))

    def config(self):
        return dict(
            kind="exponential", start=self.start, rate=self.rate, floor=self.floor, every=self.every
        )

    def __repr__(self):
        return (
            f"ExponentialDecay(start={self.start}, rate={self.rate}, floor={self.floor}, "
            f"every={self.every})"
        )


def temperature_schedule(tau=1.0, tau_min=None, tau_decay=0.0, every=1):
    """The temperature schedule of the flags ``--tau``, ``--tau-min``, ``--tau-decay``.

    Constant ``tau`` when ``tau_decay`` is 0 (``tau_min`` must then be None or ``tau``);
    otherwise ``ExponentialDecay(tau, tau_decay, tau_min, every)``, with ``tau_min`` required.

    Raises
    ------
    InvalidParameterError
        A temperature that is not a float in (0, inf), a negative rate, a decay without a
        floor, or a floor above the start; the message names the parameter.
    """
    f = "temperature_schedule"
    tau = check_param(tau, "tau", f, low=0)
    tau_decay = check_param(tau_decay, "tau_decay", f, low=0, low_inclusive=True)
    if tau_decay == 0:
        if tau_min is not None and check_param(tau_min, "tau_min", f, low=0) != tau:
            raise InvalidParameterError(
                f"The 'tau_min' parameter of {f} applies to a decaying temperature only. Got "
                f"tau_min={tau_min!r} with tau_decay=0 instead; pass tau_decay > 0 too."
            )
        return ConstantSchedule(tau)
    if tau_min is None:
        raise InvalidParameterError(
            f"The 'tau_min' parameter of {f} must be a float in (0, {tau}] when tau_decay > 0 "
            f"(the floor of the decay). Got None instead."
        )
    return ExponentialDecay(tau, tau_decay, tau_min, every)


def make_schedule(config):
    """Rebuild a schedule from its ``config()`` dict."""
    kind = config.get("kind")
    if kind == "constant":
        return ConstantSchedule(config["value"])
    if kind == "exponential":
        return ExponentialDecay(
            config["start"], config["rate"], config["floor"], config.get("every", 1)
        )
    raise ValueError(
        f"make_schedule: expected config['kind'] to be 'constant' or 'exponential', got {kind!r}."
    )
