"""floorline.kernels."""
