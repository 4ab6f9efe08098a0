"""A PyTorch Lightning callback bound to an autotune trial: `TunerTrial.callback()` on the torch backend when
the user trains with a Lightning ``Trainer``. Lightning is an optional import (``lightning`` or
``pytorch_lightning``), loaded only when a callback is asked for."""

from __future__ import annotations

import time
from typing import Any


def _lightning() -> Any:
    import importlib

    for name in ("lightning.pytorch", "pytorch_lightning"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    from autotune.errors import AutotuneError

    raise AutotuneError("trial.callback() for a Lightning Trainer needs Lightning: pip install lightning")


def batch_samples(batch: Any) -> int:
    """Samples in a batch: the first dimension of its first tensor (tuples, lists and dicts are searched)."""
    if hasattr(batch, "shape") and len(batch.shape) > 0:
        return int(batch.shape[0])
    items = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else ()
    for item in items:
        found = batch_samples(item)
        if found:
            return found
    return 0


def lightning_callback(trial: Any, *, monitor: str = "val_loss") -> Any:
    """A ``lightning.pytorch.Callback`` that times each training batch, reports ``monitor`` after each
    validation run (not the sanity check) and, when the pruner says so, stops the Trainer cleanly; the
    trial then ends as pruned when its ``with`` block closes."""
    pl = _lightning()
    import torch

    class AutotuneCallback(pl.Callback):  # type: ignore[name-defined]
        def __init__(self) -> None:
            self._tick = 0.0

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            self._tick = time.perf_counter()

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            if pl_module.device.type == "cuda":  # the step is timed when its kernels have run
                torch.cuda.synchronize(pl_module.device)
            trial.record_step(time.perf_counter() - self._tick, samples=batch_samples(batch))

        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            if trainer.sanity_checking:
                return
            value = trainer.callback_metrics.get(monitor)
            if value is None:
                from autotune.errors import AutotuneError

                known = ", ".join(sorted(trainer.callback_metrics)) or "none"
                raise AutotuneError(f"the Lightning callback monitors {monitor!r}, which the module does not log "
                                    f"(logged: {known}): self.log('{monitor}', loss) in validation_step, or "
                                    "trial.callback(monitor=...)")
            trial.report(float(value), int(trainer.current_epoch) + 1)
            if trial.should_prune():
                trainer.should_stop = True

    return AutotuneCallback()
