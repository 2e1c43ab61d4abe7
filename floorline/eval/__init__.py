"""floorline.eval: model quality measurements (perplexity, agreement with an unquantized model)."""
