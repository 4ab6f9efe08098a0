"""What a worker keeps of a Keras session between the trials it runs: the traced steps, and the variables' first
values to start the next trial from.

A fresh MobileNetV2 session spends 15–20 s tracing and optimising its ``tf.function`` steps on the CPU before
its first 0.3 s step. A worker that runs trial after trial of one task therefore keeps its last session and
restores the variables' values as the first build left them: the next trial starts from the same weights and
optimizer state a fresh session would have, without tracing again (see `TensorFlowSession.renew`).
"""

from __future__ import annotations

import resource
from typing import Any, Sequence

import numpy as np
import psutil

KEPT_SHARE = 0.01
"""A session is kept only where its variables' first values take at most this share of the worker's memory
(its address-space cap, else the machine's memory): fit-batch's margin (5 % by default) absorbs that copy."""
SHELF_SHARE = 0.02
"""The most the optimizers a kept session sets aside may hold together (their state, beside the one in use):
with `KEPT_SHARE`, 3 % of fit-batch's 5 % margin. Under a 3 GiB cap, MobileNetV2's Adam, RMSprop with momentum
and Adagrad (43 MiB) fit; at 1 % RMSprop was dropped and traced again three trials later."""

_IDLE: list[Any] = []
"""The worker's last closed session, at most one, waiting for the next trial."""


class InitialValues:
    """The values of ``variables`` when taken, to assign back later; a variable filled with one value (zeros,
    ones, an accumulator's start) is kept as that value, so an optimizer's state costs almost nothing."""

    def __init__(self, variables: Sequence[Any], *, into: Sequence[Any] | None = None) -> None:
        """The values of ``variables``, to assign to ``into`` (the same variables unless given: another model's
        counterparts, in the same order)."""
        self.variables = list(variables if into is None else into)
        self.values: list[Any] = []
        self.nbytes = 0
        for variable in variables:
            array = np.asarray(variable.numpy())
            if array.size and np.all(array == array.flat[0]):
                self.values.append((array.flat[0], array.dtype, array.shape))
            else:
                self.values.append(array)
                self.nbytes += array.nbytes

    def restore(self) -> None:
        """Assign every variable its kept value (on the variable's own device)."""
        for variable, value in zip(self.variables, self.values):
            if isinstance(value, np.ndarray):
                variable.assign(value)
            else:
                fill, dtype, shape = value
                variable.assign(np.full(shape, fill, dtype=dtype))


def worth_keeping(nbytes: int, *, share: float = KEPT_SHARE) -> bool:
    """Whether ``nbytes`` fit in ``share`` of the worker's memory."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    memory = soft if soft != resource.RLIM_INFINITY else psutil.virtual_memory().total
    return nbytes <= share * memory


def keep(session: Any) -> None:
    """Hold ``session`` for the next trial, releasing the one held before."""
    for previous in _IDLE:
        if previous is not session:
            previous.release()
    _IDLE[:] = [session]


def take() -> Any | None:
    """The held session, no longer held (the caller renews or releases it), or None."""
    return _IDLE.pop() if _IDLE else None


def holding() -> bool:
    """Whether a session is held (Keras's global state must then stay: clearing it re-optimises the steps)."""
    return bool(_IDLE)
