__version__ = "0.2.0"
"Safety Compass: post-training observability for language models."

import logging as _logging

class _DropBnbCpuKernelNotice(_logging.Filter):
    "bitsandbytes (imported by peft) warns on CPU that an optional 4-bit kernel package is absent; we never use it."
    def filter(self, record): return not str(record.msg).startswith("Failed to load CPU gemm_4bit_forward")

_logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_DropBnbCpuKernelNotice())

from safety_compass.core import SafetyCompassError
from safety_compass.models import load_default_model, load_model
from safety_compass.monitor import SafetyCompassMonitor
from safety_compass.callback import SafetyCompassCallback

__all__ = ["SafetyCompassMonitor", "SafetyCompassCallback", "load_default_model", "load_model", "SafetyCompassError"]
