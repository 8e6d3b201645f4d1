"""Training: datasets over image folders, the trainer (EMA, AMP, DDP, exact resume) and checkpoints."""
from mcfast.train.checkpoint import load_checkpoint, load_model, save_checkpoint
from mcfast.train.trainer import TrainConfig, Trainer

__all__ = ["Trainer", "TrainConfig", "load_model", "load_checkpoint", "save_checkpoint"]
