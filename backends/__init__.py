"""Hardware-abstraction layer: `get_backend(name)` returns the one object through which the engine reaches
device-specific APIs. Nothing is detected at import time; `auto` looks at the machine when called."""
from __future__ import annotations

import importlib

from backends.base import Backend

_IMPLEMENTATIONS = {
    "cpu": "backends.cpu.backend:CpuBackend",
    "cuda": "backends.cuda.backend:CudaBackend",
    "ascend": "backends.ascend.backend:AscendBackend",
}


def get_backend(name: str = "auto") -> Backend:
    """Instantiate the backend `name` (cpu | cuda | ascend | auto)."""
    if name == "auto":
        name = detect()
    if name not in _IMPLEMENTATIONS:
        raise ValueError(f"backend.name: unknown backend {name!r}; allowed: auto, {', '.join(_IMPLEMENTATIONS)}")
    module, cls = _IMPLEMENTATIONS[name].split(":")
    backend = getattr(importlib.import_module(module), cls)()
    backend.check_available()
    return backend


def detect() -> str:
    """The best backend this machine offers: ascend or cuda when their runtime reports a device, else cpu."""
    for name in ("ascend", "cuda"):
        module, cls = _IMPLEMENTATIONS[name].split(":")
        if getattr(importlib.import_module(module), cls).is_present():
            return name
    return "cpu"


__all__ = ["Backend", "get_backend", "detect"]
