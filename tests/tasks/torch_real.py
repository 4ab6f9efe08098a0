"""Real-code PyTorch tasks for the contract tests: a tiny Hugging Face GPT-2 over Python's own source bytes (a
Dataset of dict batches, a model that computes its own loss), variable-length sequences with a padding collate,
and small cases of a broken contract."""

import sysconfig
from pathlib import Path

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import autotune

SEQUENCE = 32


def tiny_gpt2() -> torch.nn.Module:
    config = GPT2Config(vocab_size=256, n_positions=SEQUENCE, n_embd=32, n_layer=1, n_head=2, bos_token_id=0,
                        eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config)


def source_bytes(limit: int) -> bytes:
    root = Path(sysconfig.get_paths()["stdlib"])
    data = b"".join(path.read_bytes() for path in sorted(root.glob("*.py"))[:40])
    return data[:limit]


class ByteSequences(torch.utils.data.Dataset):
    def __init__(self, data: bytes, length: int = SEQUENCE) -> None:
        tokens = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(torch.int64)
        self.rows = tokens[: len(tokens) // length * length].view(-1, length)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return {"input_ids": self.rows[index], "labels": self.rows[index]}


def gpt2_data():
    data = source_bytes(SEQUENCE * 600)
    return ByteSequences(data[: SEQUENCE * 500]), ByteSequences(data[SEQUENCE * 500:])


def hf_loss(model, batch):
    return model(**batch).loss


gpt2 = autotune.Task(backend="torch", model=tiny_gpt2, data=gpt2_data, compute_loss=hf_loss)


# Variable-length sequences (8 to 64 tokens) padded per batch: a probe must train on the longest ones.
class Ragged(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.lengths = rng.integers(8, 65, n)
        self.lengths[n // 2] = 256  # one long sample: the largest batch holds it
        self.rng_seed = seed

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, index: int):
        generator = torch.Generator().manual_seed(int(index) + self.rng_seed)
        tokens = torch.randint(0, 256, (int(self.lengths[index]),), generator=generator)
        return tokens, torch.tensor(int(tokens[0] % 4))


def pad(items):
    longest = max(len(tokens) for tokens, _ in items)
    batch = torch.zeros(len(items), longest, dtype=torch.int64)
    for row, (tokens, _) in enumerate(items):
        batch[row, : len(tokens)] = tokens
    return batch, torch.stack([label for _, label in items])


class BagOfTokens(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(256, 64)
        self.out = torch.nn.Linear(64, 4)

    def forward(self, tokens):
        return self.out(torch.tanh(self.embed(tokens)).mean(dim=1))


ragged = autotune.Task(backend="torch", model=BagOfTokens, data=lambda: (Ragged(400, 0), Ragged(100, 1)),
                       loss="cross_entropy", options={"collate_fn": pad})
ragged_without_collate = autotune.Task(backend="torch", model=BagOfTokens,
                                       data=lambda: (Ragged(400, 0), Ragged(100, 1)), loss="cross_entropy")


# Integer labels must reach a custom loss as integers.
def _blob_arrays():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 16)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + 2 * (x[:, 1] > 0).astype(np.int64)
    return (x[:500], y[:500]), (x[500:], y[500:])


def integer_only_loss(outputs, targets):
    if targets.dtype != torch.int64:
        raise TypeError(f"expected int64 targets, got {targets.dtype}")
    return torch.nn.functional.cross_entropy(outputs, targets)


def mlp():
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))


integer_labels = autotune.Task(backend="torch", model=mlp, data=_blob_arrays, loss=integer_only_loss)


def _int32_labels():
    (x, y), (xv, yv) = _blob_arrays()
    return (x, y.astype(np.int32)), (xv, yv.astype(np.int32))


# torch's own cross entropy refuses int32 class indices ("expected target dtype to be Long or Byte, but got Int")
int32_labels = autotune.Task(backend="torch", model=mlp, data=_int32_labels,
                             loss=torch.nn.functional.cross_entropy)


def softmax_mlp():
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4), torch.nn.Softmax(-1))


probabilities = autotune.Task(backend="torch", model=softmax_mlp, data=_blob_arrays, loss="cross_entropy")


class Flat(torch.nn.Module):
    """Outputs that do not depend on the input or the parameter's value: the loss stays at ln 4."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return torch.zeros(len(x), 4) + 0.0 * self.weight


flat = autotune.Task(backend="torch", model=Flat, data=_blob_arrays, loss="cross_entropy")


# Broken contracts.
class Strings(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 100

    def __getitem__(self, index: int):
        return "text", "label"


strings = autotune.Task(backend="torch", model=mlp, data=lambda: (Strings(), Strings()))
vector_loss = autotune.Task(backend="torch", model=tiny_gpt2, data=gpt2_data,
                            compute_loss=lambda model, batch: model(**batch).logits.mean(dim=(1, 2)))
dict_without_compute_loss = autotune.Task(backend="torch", model=tiny_gpt2, data=gpt2_data)
