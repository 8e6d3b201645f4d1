"""Synthesis pipeline: recipes, item plans, guided sampling runs and their annotated outputs."""
