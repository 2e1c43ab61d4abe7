"""floorline.server."""
