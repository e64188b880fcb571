"""The training stream: packed pairs shuffled per epoch, split over ranks and workers, resumable.

litdata does the work (docs/training-data.md): each kind's subset is a `StreamingDataset`
(deterministic shuffle from the seed, reshuffled every epoch, disjoint samples per rank) and
`CombinedStreamingDataset` mixes the two. Without [data] variant_fraction an epoch is every
pair once (under torchrun less a partial batch per kind, rank and worker, so ranks stay even),
kinds interleaved at their natural ratio; with it, each sample is variant with that
probability and an epoch ends when either kind runs out. `StreamingDataLoader.state_dict()`
is the exact data position that checkpoints save.
"""

from __future__ import annotations

from typing import Any

from flexip_model.errors import FlexIPError

from .features import BadPair
from .shards import Prepare, ShardPairs, damaged_chunk_sentence, litdata_streaming, pack_location

streaming = litdata_streaming()
from litdata.streaming.sampler import ChunkedIndex  # noqa: E402 - after the version-check switch


class PairStream(streaming.StreamingDataset):
    """One kind's shuffled subset; each sample goes through `prepare` (in the data-loader worker)."""

    def __init__(
        self, location: str, offset: int, prepare: Prepare, seed: int, cache: str | None, even_ranks: bool
    ) -> None:
        super().__init__(location, cache_dir=cache, shuffle=True, drop_last=even_ranks, seed=seed)
        self.offset = offset
        self.prepare = prepare

    def __getitem__(self, index: Any) -> Any:
        local = index.index if isinstance(index, ChunkedIndex) else int(index)
        try:
            sample = super().__getitem__(index)
        except Exception as error:
            return BadPair(damaged_chunk_sentence(self, index, error))
        try:
            return self.prepare(self.offset + local, self.current_epoch, sample)
        except FlexIPError as error:  # an undecodable image: the sentence names the pair
            return BadPair(str(error))


def training_loader(
    pairs: ShardPairs,
    prepare: Prepare,
    seed: int,
    batch_size: int,
    num_workers: int,
    variant_fraction: float | None,
    collate,
    pin_memory: bool,
    even_ranks: bool = False,
) -> Any:
    """The `StreamingDataLoader` of this rank's micro-batches (one epoch per iteration). `even_ranks` (under
    torchrun) drops the pairs that would give ranks and workers unequal shares."""
    streams = [
        PairStream(pack_location(pairs.root, kind), offset, prepare, seed, pairs.stream_cache, even_ranks)
        for kind, offset, _ in pairs.subsets
    ]
    weights = None
    if variant_fraction is not None and len(pairs.kinds) == 2:
        weights = [1.0 - variant_fraction, variant_fraction]  # KINDS order: invariant, variant
    combined = streaming.CombinedStreamingDataset(streams, seed=seed, weights=weights, iterate_over_all=weights is None)
    return streaming.StreamingDataLoader(
        combined, batch_size=batch_size, num_workers=num_workers, collate_fn=collate, pin_memory=pin_memory
    )
