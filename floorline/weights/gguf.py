"""GGUF weight source: reads a GGUF v2/v3 file, builds its HF config, yields HF-named weights.

The jobs live in their own modules:
- `gguf_file`: the container reader (header, metadata, tensor infos, memory-mapped tensor loads);
- `gguf_quants`: the ggml tensor types and their block dequantization;
- `gguf_config`: the Hugging Face config built from the metadata;
- `gguf_weights`: GGUF tensor names -> HF names, and the weights in HF layout.

This module re-exports the two names that callers outside `floorline.weights` import from it.
"""

from floorline.weights.gguf_config import gguf_to_hf_config
from floorline.weights.gguf_file import GGUFFile

__all__ = ["GGUFFile", "gguf_to_hf_config"]
