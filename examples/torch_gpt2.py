"""A small GPT-2 from Hugging Face ``transformers`` (random init, no download) as a byte-level language model
over Python's own source text: a map-style Dataset of dict batches and a model that computes its own loss.

Run ``autotune tune examples/torch_gpt2.py --trials 6 --trial-time 4``.
"""

import os
import sysconfig
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

import autotune

SEQUENCE = 128
SEQUENCES = 1408


def build_model() -> torch.nn.Module:
    config = GPT2Config(vocab_size=256, n_positions=SEQUENCE, n_embd=128, n_layer=2, n_head=4, bos_token_id=0,
                        eos_token_id=0,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config)


def python_source_bytes(limit: int) -> bytes:
    """The first ``limit`` bytes of the standard library's own ``.py`` files, in a fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    chunks, size = [], 0
    for path in sorted(root.glob("*.py")):
        text = path.read_bytes()
        chunks.append(text)
        size += len(text)
        if size >= limit:
            break
    return b"".join(chunks)[:limit]


class ByteSequences(torch.utils.data.Dataset):
    """Fixed-length byte sequences; each item is ``{"input_ids": ..., "labels": ...}`` (int64)."""

    def __init__(self, data: bytes, length: int) -> None:
        tokens = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(torch.int64)
        self.rows = tokens[: len(tokens) // length * length].view(-1, length)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        row = self.rows[index]
        return {"input_ids": row, "labels": row}


def load_data():
    data = python_source_bytes(SEQUENCE * SEQUENCES)
    split = int(0.9 * SEQUENCES) * SEQUENCE
    return ByteSequences(data[:split], SEQUENCE), ByteSequences(data[split:], SEQUENCE)


def compute_loss(model, batch):
    return model(**batch).loss  # the model shifts the labels and returns its own cross entropy


task = autotune.Task(backend="torch", model=build_model, data=load_data, compute_loss=compute_loss)
