"""How long one ``cpu-small`` optimiser step takes on this machine now: the demo's budget unit.

Measured, not assumed: the machine's speed and its load by other work both count, and on a busy
machine one torch thread can be several times faster than two (their OpenMP threads spin-wait
for each other), so both are tried.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from geojepa.data.reader import TileDataset
    from geojepa.train.config import PretrainConfig


def seconds_per_step(
    dataset: TileDataset, config: PretrainConfig, repeats: int = 5, threads: int | None = None
) -> float:
    """Wall seconds of one optimiser step of ``config`` on a real batch of ``dataset``.

    One warm-up step, then the median of ``repeats`` timed forward + backward + AdamW steps
    with ``threads`` torch threads: it measures this machine as it is now (other load
    included), which is what the budget needs.
    """
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _time_steps(dataset, config, repeats)
    finally:
        torch.set_num_threads(before)


def fastest_threads(dataset: TileDataset, config: PretrainConfig) -> tuple[int, float]:
    """(torch threads, seconds per step): all cores, or one when that is faster.

    On a busy machine, torch's threads spin-wait for each other and one thread can be several
    times faster than two; on an idle one, more threads win. Measuring decides.
    """
    import torch

    options = sorted({torch.get_num_threads(), 1}, reverse=True)
    timed = [(seconds_per_step(dataset, config, threads=n), n) for n in options]
    seconds, threads = min(timed)
    return threads, seconds


def _time_steps(dataset: TileDataset, config: PretrainConfig, repeats: int) -> float:
    import torch

    from geojepa.model.jepa import build_model
    from geojepa.tokenize.loader import make_dataloader
    from geojepa.tokenize.tags import TagVocabulary, build_tag_table

    vocab = TagVocabulary.from_dataset(dataset)
    table = build_tag_table(vocab, config.tokenizer.text_model, cache_dir=dataset.path)
    torch.manual_seed(0)
    model = build_model(config, table).train()
    loader = make_dataloader(
        dataset, vocab, config.tokenizer, batch_size=config.data.batch_size, shuffle=True,
        seed=0, cache=False,
    )  # fmt: skip
    batch = next(iter(loader))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    times = []
    for i in range(repeats + 1):  # step 0 warms up
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        model(batch, gen).loss.backward()
        opt.step()
        model.update_target(0.99)
        if i:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]
