"""The two model families as data: how to recognise a checkpoint, and which size modes each engine can
really serve for it, with the views they use.

In: a checkpoint directory (its `config.json`) or a family name and an engine name. Out: a `Family` and
a mode table `{name: ModeSpec}`. A mode an engine cannot serve is absent from its table, so the
schema refuses it with `mode_unavailable` instead of running other settings than the result reports.

Why the tables differ:
- DeepSeek-OCR-2 has learned vision queries for two view sizes only, 1024 (256 tokens) and 768
  (144 tokens); v1's 512, 640 and 1280 views would give token counts it has no queries for. On
  transformers each name maps to the nearest view v2 has (the processor takes sizes per call).
- vLLM's DeepSeek processors read the view sizes from module constants (v1: 1024 global + 640 tiles;
  v2: 1024 global + 768 tiles, crop on), and per-request sizes fail with a placeholder-count mismatch,
  so on vLLM only the tiled configuration exists: gundam (and v2's large, which is the same view).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from .engine.api import ViewConfig
from .errors import ConfigError

MODE_NAMES = ("tiny", "small", "base", "large", "gundam")
DEFAULT_MODE = "gundam"
V1 = "deepseek-ocr"
V2 = "deepseek-ocr-2"
# SAM patch 16 then a 4x conv downsample: one vision token per 64x64 pixels of a view (v2); v1's
# 16x compressor gives the same per-side count.
PIXELS_PER_TOKEN_SIDE = 64


@dataclass(frozen=True)
class ModeSpec:
    name: str
    view: ViewConfig
    note: str
    # v1 adds a newline token per row of each view and a separator; v2 one separator per image.
    row_newlines: bool = False

    def vision_tokens(self, tiles: int, tile_rows: int = 0) -> int:
        """Placeholder tokens of a page with `tiles` local tiles in `tile_rows` rows (0 when crop is
        off or the page fits one tile)."""
        view, side = self.view, self.view.view_size // PIXELS_PER_TOKEN_SIDE
        tile_side = (view.tile_size or 0) // PIXELS_PER_TOKEN_SIDE
        if not self.row_newlines:  # v2: the views' tokens, then one separator
            return side * side + tiles * tile_side * tile_side + 1
        # v1 (vLLM's DeepseekOCR processor): the global view's rows each end in a newline token, then a
        # separator; the tiles form one grid whose rows (tile_side per tile row) also end in one.
        return side * (side + 1) + 1 + tiles * tile_side * tile_side + tile_rows * tile_side


@dataclass(frozen=True)
class Family:
    name: str
    hub_id: str
    architectures: tuple[str, ...]  # as written in the checkpoint's config.json
    modes: Mapping[str, Mapping[str, ModeSpec]]  # engine -> mode name -> spec

    def mode_table(self, engine: str) -> Mapping[str, ModeSpec]:
        return self.modes.get(engine, {})


_V2_768 = ViewConfig(view_size=768, tile_size=None, crop=False, min_tiles=0, max_tiles=0)
_V2_1024 = ViewConfig(view_size=1024, tile_size=None, crop=False, min_tiles=0, max_tiles=0)
_V2_TILED = ViewConfig(view_size=1024, tile_size=768, crop=True, min_tiles=2, max_tiles=6)
_V1_TILED = ViewConfig(view_size=1024, tile_size=640, crop=True, min_tiles=2, max_tiles=6)

_V2_GUNDAM = ModeSpec("gundam", _V2_TILED,
                      "1024 global view + 2..6 tiles of 768 when the page exceeds 768 px (257..1121 tokens)")
_V2_LARGE = ModeSpec("large", _V2_TILED,
                     "v1 1280px view; v2 has none, so extra detail comes from 768 tiles, same as gundam")

FAMILIES: dict[str, Family] = {
    V2: Family(
        name=V2, hub_id="deepseek-ai/DeepSeek-OCR-2",
        architectures=("DeepseekOCR2ForCausalLM", "DeepseekOcr2ForConditionalGeneration"),
        modes={
            "transformers": {
                "tiny": ModeSpec("tiny", _V2_768, "v1 512px view; v2's smallest view is 768 (145 tokens)"),
                "small": ModeSpec("small", _V2_768, "v1 640px view; v2 has no 640 view, same as tiny (145 tokens)"),
                "base": ModeSpec("base", _V2_1024, "1024 global view, aspect kept by padding (257 tokens)"),
                "large": _V2_LARGE,
                "gundam": _V2_GUNDAM,
            },
            "vllm": {"large": _V2_LARGE, "gundam": _V2_GUNDAM},
        },
    ),
    V1: Family(
        name=V1, hub_id="deepseek-ai/DeepSeek-OCR",
        architectures=("DeepseekOCRForCausalLM",),
        modes={
            "vllm": {
                "gundam": ModeSpec("gundam", _V1_TILED,
                                   "1024 global view + 2..6 tiles of 640 when the page exceeds 640 px "
                                   "(273..933 tokens)",
                                   row_newlines=True),
            },
        },
    ),
}


def detect_family(model_path: Path) -> Family:
    """The family of the checkpoint at `model_path`, from `architectures` in its config.json.
    Raises ConfigError naming the path when it is missing or neither family."""
    config_file = Path(model_path) / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"no model at MODEL_PATH={model_path} (config.json missing). Bake the weights into the image "
            "with builder/download_model.py (see RUNPOD_DEPLOYMENT.md) or point MODEL_PATH at a directory "
            "holding a DeepSeek-OCR or DeepSeek-OCR-2 checkpoint; the worker never downloads at run time.") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{config_file} is not readable JSON ({exc})") from None
    architectures = set(config.get("architectures") or ())
    for family in FAMILIES.values():
        if architectures & set(family.architectures):
            return family
    raise ConfigError(f"{config_file} names architectures {sorted(architectures)}; expected one of "
                      + ", ".join(a for f in FAMILIES.values() for a in f.architectures))
