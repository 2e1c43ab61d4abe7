"""floorline.runner."""
