"""pytest plugin of the learning sweep: breaks training on purpose so that the sweep can show
every learning test fails when no learning happens (``RBC_TEST_MUTATION``).

- ``no_step``: every optimiser's step leaves the weights as they are.
- ``detached_loss``: ``backward()`` puts no gradient on the weights, as a loss detached from
  the model would.

Loaded by ``tests/learning_sweep.py`` as ``pytest -p learning_mutations``; never by ``make test``.
"""
from __future__ import annotations

import os

MUTATIONS = ("no_step", "detached_loss")


def pytest_configure(config) -> None:
    mutation = os.environ.get("RBC_TEST_MUTATION", "")
    if not mutation:
        return
    if mutation not in MUTATIONS:
        raise ValueError(f"RBC_TEST_MUTATION={mutation!r}: expected one of {', '.join(MUTATIONS)}")
    import torch

    if mutation == "no_step":
        for name in dir(torch.optim):
            optimiser = getattr(torch.optim, name)
            if isinstance(optimiser, type) and issubclass(optimiser, torch.optim.Optimizer):
                optimiser.step = lambda self, closure=None: None
    else:
        torch.Tensor.backward = lambda self, *args, **kwargs: None
