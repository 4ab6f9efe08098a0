"""Native start-up noise on standard error, filtered at file descriptor 2; imports no framework.

A framework's C++ side writes some lines to file descriptor 2 before its logging is set up (TensorFlow's oneDNN
and CPU-feature notices, absl's "All log messages before absl::InitializeLog()"), where no Python setting
reaches them. `quiet_native_noise` captures the descriptor in a temporary file for the length of a body and
writes back every line but the known noise; the TensorFlow backend wraps its own import in it.
`quiet_framework_imports` applies it, with each framework's log-level variables, to an import that may load any
framework: a user's task module that imports its framework itself (``import tensorflow as tf``), in the main
process and in a worker. Nothing here imports a framework, so a torch task's import does not load TensorFlow to
filter what TensorFlow would print.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from typing import IO, Iterable, Iterator, Mapping

from autotune.scoped import environment_defaults

TENSORFLOW_PRE_INIT_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|I\d{4} [0-9:.]+ +\d+ [\w.]+:\d+\] .*)$"
)
"""The INFO lines TensorFlow's C++ side writes while it loads, before TF_CPP_MIN_LOG_LEVEL applies: the oneDNN
notice is logged by a static initialiser before absl logging is set up (once per shared library that links it),
so the environment variable cannot silence it."""

TENSORFLOW_NO_ACCELERATOR_NOISE = re.compile(
    r"^[IWE]\d{4} [0-9:.]+ +\d+ [\w.]+:\d+\] (failed call to cuInit|Could not find cuda drivers"
    r"|Cannot dlopen some GPU libraries|Unable to register cu\w+ factory).*$"
)
"""What a TensorFlow build with GPU support logs when it finds no GPU (here on the CPU with the full
``tensorflow`` package: ``E ... cuda_platform.cc:52] failed call to cuInit: ... UNKNOWN ERROR (303)``, at the
first device listing, at ERROR level so that TF_CPP_MIN_LOG_LEVEL=2 keeps it). The device list says it."""

TENSORFLOW_CPU_HALF_NOISE = re.compile(
    r"^[IWE]\d{4} [0-9:.]+ +\d+ [\w.]+:\d+\] oneDNN supports DT_(HALF|BFLOAT16) only on platforms with .*$"
)
"""What TensorFlow logs, at ERROR level, the first time a float16 or bfloat16 kernel runs on a CPU without the
instructions oneDNN needs for it: it falls back to Eigen's kernels and goes on. The mode's own figures say how
slow that is."""

TENSORFLOW_LOG_LEVEL: Mapping[str, str] = {"TF_CPP_MIN_LOG_LEVEL": "2"}
"""TensorFlow reads its C++ log level once, while it loads: INFO and WARNING lines off, errors still shown."""


def either(*patterns: re.Pattern[str]) -> re.Pattern[str]:
    """One pattern that matches a line where any of ``patterns`` does (each is anchored on its own)."""
    return re.compile("|".join(f"(?:{pattern.pattern})" for pattern in patterns))


# Every framework's load-time noise and log-level defaults: an import of a user's module may load any of them.
_IMPORT_NOISE = either(TENSORFLOW_PRE_INIT_NOISE, TENSORFLOW_NO_ACCELERATOR_NOISE)
_IMPORT_ENVIRONMENT: Mapping[str, str] = {**TENSORFLOW_LOG_LEVEL}


@contextlib.contextmanager
def quiet_native_noise(noise: re.Pattern[str]) -> Iterator[None]:
    """Drop the lines matching ``noise`` that native code writes to standard error in the body.

    Standard error (file descriptor 2) is captured in a temporary file meanwhile, and every other line, warnings
    and errors included, is written back unchanged when the body ends (also when it raises).
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        capture = tempfile.TemporaryFile()
        os.dup2(capture.fileno(), 2)
    except (OSError, ValueError, AttributeError):  # no real file descriptor 2: nothing to filter
        yield
        return
    try:
        yield
    finally:
        _restore(saved, capture, noise)


def _restore(saved: int, capture: IO[bytes], noise: re.Pattern[str]) -> None:
    """Put the saved descriptor back as standard error and write to it what ``capture`` holds but ``noise``."""
    try:
        sys.stderr.flush()  # Python's own buffered writes belong to the capture, in their order
    except (OSError, ValueError):
        pass
    os.dup2(saved, 2)
    os.close(saved)
    capture.seek(0)
    # bytes in, the same bytes out: a line that is not noise is written back as it was written
    kept = [line for line in capture.read().splitlines(keepends=True)
            if not noise.match(line.decode(errors="replace").rstrip("\r\n"))]
    capture.close()
    data = b"".join(kept)
    while data:  # a pipe or terminal may take fewer bytes than offered
        data = data[os.write(2, data):]


@contextlib.contextmanager
def quiet_framework_imports() -> Iterator[None]:
    """For an import that may load a framework (a user's task module): every known framework's start-up noise
    is dropped and its log-level variables are set, only where the caller has not set them and only for the
    body, so that the caller's environment, and its children's, stays as it was."""
    with quiet_native_noise(_IMPORT_NOISE), environment_defaults(**_IMPORT_ENVIRONMENT):
        yield


NOISY_AT_IMPORT = ("tensorflow", "keras")
"""Top-level modules whose first import writes native start-up noise (Keras loads TensorFlow as its backend)."""


def quiet_if_loading(modules: Iterable[str]) -> contextlib.AbstractContextManager[None]:
    """`quiet_framework_imports` where ``modules`` (what an import is about to import) would load a noisy framework
    for the first time in this process; else nothing. The capture holds back everything else the body writes to
    standard error until it ends (a crash in it would lose those lines), so it is kept to the imports that need it."""
    if "tensorflow" in sys.modules:  # loaded already: its start-up lines were written (or dropped) then
        return contextlib.nullcontext()
    if any(module.split(".")[0] in NOISY_AT_IMPORT for module in modules):
        return quiet_framework_imports()
    return contextlib.nullcontext()
