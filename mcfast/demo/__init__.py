"""The embedded default: phantom training data, the shipped small models, and `mcfast demo`."""
