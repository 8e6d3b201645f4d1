"""Evaluation of synthetic images: the Visual Turing Test (``mcfast.evaluate.turing``), classifier study, realism."""
