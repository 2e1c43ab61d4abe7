"""The quantization in force while a model is built: each `Linear` asks it for its QuantMethod.

The loader installs the model's QuantConfig around `build_model`, so model files and the registry
stay unaware of quantization (DESIGN rule 5), as `forward_context` does for attention metadata.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from floorline.quant.base import QuantMethod
    from floorline.quant.config import QuantConfig

_current: QuantConfig | None = None


@contextmanager
def quantization_context(config: QuantConfig | None) -> Iterator[None]:
    """Installs `config` while the model is constructed (None: plain weights)."""
    global _current
    previous, _current = _current, config
    try:
        yield
    finally:
        _current = previous


def method_for_linear(prefix: str) -> QuantMethod | None:
    """The QuantMethod for the Linear named `prefix`, or None for plain weights."""
    return None if _current is None else _current.method_for(prefix)


def method_for_lm_head() -> QuantMethod | None:
    """The LM head's QuantMethod where the config quantizes it (`QuantConfig.lm_head`), else None."""
    return None if _current is None else _current.lm_head_method()
