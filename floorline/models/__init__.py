"""floorline.models."""
