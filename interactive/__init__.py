"""Interactive stage: decoding from a feature store, vectorising masks, the dock and map tools."""
