"""Names and defaults that several layers share, defined once (torch-free, imports nothing)."""

from __future__ import annotations

#: index of tile tables and tile embeddings: XYZ tile ids ``z/x/y`` (SRAI's ``REGIONS_INDEX``)
REGIONS_INDEX = "region_id"
#: index of entity tables and entity embeddings: OSM ids ``node/…``, ``way/…``, ``relation/…``
FEATURES_INDEX = "feature_id"

#: real tokens per embedding forward pass (`embed`, `evaluate`, the API): fastest of
#: 1,024–8,192 on a 2-core CPU (benchmarks/embed.py --sweep); a GPU likely wants more
EMBED_TOKENS_PER_BATCH = 2048
#: tiles per embedding forward pass when the token budget is off (``tokens_per_batch=0``)
EMBED_BATCH_SIZE = 64
#: entities a tile's tokens hold (``tokenizer.max_entities``); a tile with more keeps a seeded
#: choice of this many (`tokenize.loader`), and `geojepa info` / `pretrain` say what is cut
MAX_ENTITIES = 1024
