"""OLMo-3: OLMo-2's tree (norms after attention and FFN, QK-norm) with interleaved sliding-window layers."""

from dataclasses import replace

from .base import register_adapter
from .olmo2 import OLMO2

register_adapter(replace(OLMO2, model_type="olmo3"))
