"""floorline.weights."""
