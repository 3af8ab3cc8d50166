"""From the tile dataset on disk to model inputs: tag vocabulary and frozen text table, entity
geometry features, image patches, the fusion tokenizer, `TileBatch` and the streaming loader."""

from geojepa.tokenize.batch import TileBatch
from geojepa.tokenize.geometry import SCALAR_NAMES, geometry_features
from geojepa.tokenize.loader import make_dataloader
from geojepa.tokenize.tags import TagVocabulary, build_tag_table
from geojepa.tokenize.tokenizer import TileTokenizer, TokenizerConfig, Tokens

__all__ = [
    "SCALAR_NAMES",
    "TagVocabulary",
    "TileBatch",
    "TileTokenizer",
    "TokenizerConfig",
    "Tokens",
    "build_tag_table",
    "geometry_features",
    "make_dataloader",
]
