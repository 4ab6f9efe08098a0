"""Training steps of the user's own code, for `autotune.find_batch_size`: module-level, so a worker can import
them by name."""

import torch

from tests.tasks.torch_tasks import Hungry  # about 0.5 MiB of saved activations per sample

torch.manual_seed(0)
model = Hungry()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)


def hungry_step(batch_size):
    """One training step at ``batch_size`` on generated data: forward, backward, Adam update."""
    x = torch.randn(batch_size, 16)
    y = torch.randint(0, 4, (batch_size,))
    optimizer.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    return loss.item()


def broken_step(batch_size):
    return model(torch.zeros(batch_size, 17))  # wrong input width: fails at every size
