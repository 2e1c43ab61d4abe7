"""floorline.quant."""
