"""mcfast: annotated synthetic lung CT and mammograms from multi-condition ILVR-guided DDPMs."""
__version__ = "0.1.0"
