"""floorline: an LLM inference engine whose decode runs at the memory floor."""

__version__ = "0.1.0"
