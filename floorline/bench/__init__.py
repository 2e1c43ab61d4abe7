"""floorline.bench."""
