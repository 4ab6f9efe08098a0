"""autotune: tune a training job to the hardware it runs on.

Probe the devices, fit the batch size to memory, search batch size × optimizer × learning rate with Optuna,
and keep every trial. Importing this package imports no deep-learning framework and changes nothing global
of the caller (warnings filters, loggers, environment variables, file descriptors).
"""

from autotune.backends import register_backend
from autotune.devices import Device, probe
from autotune.errors import (
    AutotuneError,
    BackendNotInstalled,
    DeviceError,
    FitError,
    SearchSpaceError,
    StorageError,
    TaskError,
    TrialError,
    UnknownBackend,
)
from autotune.fitting.step import find_batch_size
from autotune.memory import BatchFit, MemoryModel, fit_batch_size
from autotune.space import SearchSpace, load_space
from autotune.study import TuneResult, load_best, load_result, tune
from autotune.task import LOSS_NAMES, Task, load_task
from autotune.tuner import Tuner, TunerTrial
from autotune.units import format_size, parse_size

__version__ = "0.1.0"

__all__ = [
    "AutotuneError",
    "BackendNotInstalled",
    "BatchFit",
    "Device",
    "DeviceError",
    "FitError",
    "LOSS_NAMES",
    "MemoryModel",
    "SearchSpaceError",
    "StorageError",
    "Task",
    "TaskError",
    "TrialError",
    "UnknownBackend",
    "find_batch_size",
    "fit_batch_size",
    "format_size",
    "load_task",
    "parse_size",
    "load_best",
    "load_result",
    "load_space",
    "probe",
    "register_backend",
    "SearchSpace",
    "tune",
    "TuneResult",
    "Tuner",
    "TunerTrial",
]
