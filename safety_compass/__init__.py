__version__ = "0.3.0"
"Safety Compass: post-training observability for language models."

# `core` also demotes a library's start-up warning no CPU user can act on (core.quiet_library_noise).
from safety_compass.core import SafetyCompassError

# The public names below import torch / transformers / peft, so they load on first use (PEP 562): the CLI can then
# report a config error in a moment instead of after seconds of imports it does not need.
_LAZY = {"load_default_model": "models", "load_model": "models", "load_organism": "organisms",
         "SafetyCompassMonitor": "monitor", "SafetyCompassCallback": "callback"}

def __getattr__(name):
    if name in _LAZY:
        import importlib
        value = getattr(importlib.import_module(f"safety_compass.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'safety_compass' has no attribute {name!r}")

def __dir__(): return sorted({*globals(), *_LAZY})

__all__ = ["SafetyCompassMonitor", "SafetyCompassCallback", "load_default_model", "load_model", "load_organism",
           "SafetyCompassError"]
