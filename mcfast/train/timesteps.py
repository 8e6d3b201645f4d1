"""Timestep sampling for training: uniform, or loss-aware importance sampling (improved-DDPM §3.3).

The importance sampler keeps the last ``history_per_term`` losses of every t and, once all
are filled, draws t ∝ sqrt(E[L_t²]) (mixed with ``uniform_prob`` of uniform), weighting the loss
by 1 / (T·p_t) so the objective stays unbiased. Its state is tensors, saved with checkpoints.
"""
from __future__ import annotations

import torch


class UniformSampler:
    def __init__(self, num_timesteps: int):
        self.num_timesteps = num_timesteps

    def weights(self) -> torch.Tensor:
        return torch.ones(self.num_timesteps, dtype=torch.float64)

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(t (B,) long, loss weights (B,) float32), drawn on the generator's device (CPU)."""
        t = torch.randint(0, self.num_timesteps, (batch_size,), generator=generator)
        return t, torch.ones(batch_size)

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        pass

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        pass


class LossSecondMomentResampler(UniformSampler):
    def __init__(self, num_timesteps: int, history_per_term: int = 10, uniform_prob: float = 0.001):
        super().__init__(num_timesteps)
        self.history_per_term = history_per_term
        self.uniform_prob = uniform_prob
        self.loss_history = torch.zeros(num_timesteps, history_per_term, dtype=torch.float64)
        self.loss_counts = torch.zeros(num_timesteps, dtype=torch.long)

    def warmed_up(self) -> bool:
        return bool((self.loss_counts == self.history_per_term).all())

    def weights(self) -> torch.Tensor:
        if not self.warmed_up():
            return torch.ones(self.num_timesteps, dtype=torch.float64)
        w = torch.sqrt((self.loss_history ** 2).mean(dim=1))
        w = w / w.sum()
        return w * (1 - self.uniform_prob) + self.uniform_prob / self.num_timesteps

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.weights()
        p = w / w.sum()
        t = torch.multinomial(p, batch_size, replacement=True, generator=generator)
        weights = (1.0 / (self.num_timesteps * p[t])).float()
        return t, weights

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Record per-example losses (all ranks' losses, in the same order on every rank)."""
        for ti, loss in zip(t.tolist(), losses.detach().double().cpu().tolist()):
            n = int(self.loss_counts[ti])
            if n == self.history_per_term:
                self.loss_history[ti, :-1] = self.loss_history[ti, 1:].clone()
                self.loss_history[ti, -1] = loss
            else:
                self.loss_history[ti, n] = loss
                self.loss_counts[ti] += 1

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"loss_history": self.loss_history.clone(), "loss_counts": self.loss_counts.clone()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        if "loss_history" in tensors:
            self.loss_history = tensors["loss_history"].to(torch.float64).clone()
            self.loss_counts = tensors["loss_counts"].to(torch.long).clone()


class SubsetSampler(UniformSampler):
    """Uniform over a subset of the chain: the steps a respaced sampler visits (Fast-DDPM's idea: a model
    only ever called at those steps need not learn the others)."""

    def __init__(self, num_timesteps: int, respacing: str):
        from mcfast.diffusion.schedule import space_timesteps
        super().__init__(num_timesteps)
        self.respacing = respacing
        self.steps = torch.tensor(sorted(space_timesteps(num_timesteps, respacing)), dtype=torch.long)

    def weights(self) -> torch.Tensor:
        w = torch.zeros(self.num_timesteps, dtype=torch.float64)
        w[self.steps] = 1.0
        return w

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        pick = torch.randint(0, len(self.steps), (batch_size,), generator=generator)
        return self.steps[pick], torch.ones(batch_size)


def create_timestep_sampler(name: str, num_timesteps: int, **kwargs) -> UniformSampler:
    from mcfast.errors import InputError
    if name == "uniform":
        return UniformSampler(num_timesteps)
    if name == "loss-second-moment":
        return LossSecondMomentResampler(num_timesteps, **kwargs)
    if name.startswith("visited:"):
        return SubsetSampler(num_timesteps, name.split(":", 1)[1])
    raise InputError(f"unknown timestep sampler {name!r}; expected 'uniform', 'loss-second-moment' or "
                     f"'visited:RESPACING' (e.g. visited:100)")
