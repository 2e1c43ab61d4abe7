"""floorline.analysis."""
