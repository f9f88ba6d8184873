"""Streaming a training-set split into torch, chunk by chunk, with bounded memory.

``TrainingSetStream`` is an ``IterableDataset`` over one split of a published training set
(local path or URL). Each epoch it shuffles the order of the Zarr chunks, splits them across
DataLoader workers, and shuffles rows within a buffer of ``buffer_chunks`` chunks, so memory is
bounded by the buffer, never by the dataset. The store is opened inside each worker (fsspec's
HTTP file system is not fork-safe: an array opened in the parent fails in a forked child).

``streamed_moments`` gives the statistics of the input transform (``estimators.Log1pStandardize``,
a network layer) in one streamed pass over the training split.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import torch
import zarr

from casbi_store.store import schema as S
from casbi_store.store import trainingsets


class TrainingSetStream(torch.utils.data.IterableDataset):
    """Rows ``(x, target)`` of one split: ``x`` float32 (1, 64, 64) counts, ``target`` the
    requested variable (``n_sub`` as float32 of shape (1,), or ``theta`` (block, param))."""

    def __init__(self, store: str | os.PathLike, name: str, version: str, split: str,
                 target: str = S.N_SUB.name, buffer_chunks: int = 4, seed: int = 0,
                 shuffle: bool = True, return_index: bool = False,
                 storage_options: dict | None = None):
        if split not in S.SPLITS:
            raise ValueError(f"split must be one of {S.SPLITS}, not {split!r}")
        if target not in (S.N_SUB.name, S.THETA.name):
            raise ValueError(f"target must be {S.N_SUB.name!r} or {S.THETA.name!r}")
        if buffer_chunks < 1:
            raise ValueError("buffer_chunks must be >= 1")
        self.store, self.name, self.version, self.split = os.fspath(store), name, version, split
        self.group = trainingsets.set_path(name, version, split)
        self.target, self.buffer_chunks, self.seed = target, buffer_chunks, seed
        self.shuffle, self.return_index = shuffle, return_index
        self.storage_options = storage_options
        self.epoch = 0
        arrays = self._open()  # validate now; reopened per worker when iterating
        self.n_rows, self.chunk_rows = arrays[S.X.name].shape[0], arrays[S.X.name].chunks[0]

    @classmethod
    def from_source(cls, source, **options) -> TrainingSetStream:
        """The stream of an intake catalog entry (``casbi_training_set``), e.g.
        ``TrainingSetStream.from_source(intake.open_catalog(url).nsub_uniform(split="train"))``:
        same store (local, HTTP or S3), set, resolved version and split."""
        return cls(source.store, source.set_name, source.set_version, source.split,
                   storage_options=source.storage_options or None, **options)

    def _open(self) -> zarr.Group:
        return trainingsets.open_split_group(self.store, self.name, self.version, self.split,
                                             self.storage_options)

    def __len__(self) -> int:
        return self.n_rows

    def set_epoch(self, epoch: int) -> None:
        """Call before each epoch: the chunk and row order depend on (seed, epoch)."""
        self.epoch = epoch

    def chunk_order(self) -> np.ndarray:
        n_chunks = -(-self.n_rows // self.chunk_rows)
        order = np.arange(n_chunks)
        if self.shuffle:
            np.random.default_rng([self.seed, self.epoch]).shuffle(order)
        return order

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        info = torch.utils.data.get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info else (0, 1)
        mine = self.chunk_order()[worker::n_workers]
        group = self._open()  # inside the worker
        x_arr, t_arr = group[S.X.name], group[self.target]
        rng = np.random.default_rng([self.seed, self.epoch, worker])
        for start in range(0, len(mine), self.buffer_chunks):
            xs, ts, idx = [], [], []
            for c in mine[start:start + self.buffer_chunks]:
                lo = int(c) * self.chunk_rows
                hi = min(lo + self.chunk_rows, self.n_rows)
                xs.append(x_arr[lo:hi])
                ts.append(t_arr[lo:hi])
                idx.append(np.arange(lo, hi))
            x, t, index = np.concatenate(xs), np.concatenate(ts), np.concatenate(idx)
            order = rng.permutation(len(x)) if self.shuffle else np.arange(len(x))
            for i in order:
                row = (torch.from_numpy(x[i].astype(np.float32)[None]),
                       torch.from_numpy(np.atleast_1d(np.asarray(t[i], dtype=np.float32))))
                yield (*row, int(index[i])) if self.return_index else row


def x_chunks(stream: TrainingSetStream) -> Iterator[np.ndarray]:
    """The split's histograms as float64 blocks of one Zarr chunk each, in order."""
    x_arr = stream._open()[S.X.name]
    for start in range(0, x_arr.shape[0], stream.chunk_rows):
        yield x_arr[start:start + stream.chunk_rows].astype(np.float64)


def streamed_moments(stream: TrainingSetStream) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel mean and standard deviation of log1p(x), in one pass over the split's chunks."""
    total = total_sq = 0.0
    n = 0
    for chunk in x_chunks(stream):
        block = np.log1p(chunk)
        total += block.sum(axis=0)
        total_sq += (block**2).sum(axis=0)
        n += len(block)
    mean = total / n
    std = np.sqrt(np.maximum(total_sq / n - mean**2, 0.0))
    return mean, std

