"""floorline.layers."""
