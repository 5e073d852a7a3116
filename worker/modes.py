"""Size-mode presets: the five names users know from DeepSeek-OCR v1, mapped onto the views that
DeepSeek-OCR-2 really has.

DeepSeek-OCR-2 has learned vision queries for two view sizes only: 1024 px (256 tokens) and 768 px
(144 tokens), and its documented setting is a 1024 global view plus 0 or 2..6 tiles of 768. The v1
sizes 512, 640 and 1280 would produce a token count the model has no queries for, so each name maps
to the nearest configuration v2 supports, and results report what was used.

In: a mode name. Out: a frozen `ViewConfig` and the vision-token arithmetic the processor uses.
"""

from __future__ import annotations

from dataclasses import dataclass

MODE_NAMES = ("tiny", "small", "base", "large", "gundam")
DEFAULT_MODE = "gundam"
# SAM patch 16 then a 4x conv downsample: one vision token per 64x64 pixels of a view.
PIXELS_PER_TOKEN_SIDE = 64
# The processor and model add one learned view-separator token after each image's views.
SEPARATOR_TOKENS = 1


@dataclass(frozen=True)
class ViewConfig:
    """How one page is shown to the vision encoder."""

    view_size: int  # the global view, padded square
    tile_size: int | None  # local tiles when crop is on
    crop: bool
    min_tiles: int
    max_tiles: int

    def processor_kwargs(self) -> dict:
        """Keyword arguments for `DeepseekOcr2Processor.__call__`.

        transformers 5.23's image processor resizes the global view to `tile_size` when
        `crop_to_patches` is False, while the token count uses `size`: both must be the view size
        or generation fails with "Image features and image tokens do not match".
        """
        if self.crop:
            return {
                "crop_to_patches": True,
                "size": {"height": self.view_size, "width": self.view_size},
                "tile_size": self.tile_size,
                "min_patches": self.min_tiles,
                "max_patches": self.max_tiles,
            }
        return {
            "crop_to_patches": False,
            "size": {"height": self.view_size, "width": self.view_size},
            "tile_size": self.view_size,
        }

    def vision_tokens(self, tiles: int) -> int:
        """Placeholder tokens for a page with `tiles` local tiles (0 when crop is off or skipped)."""
        per_view = (self.view_size // PIXELS_PER_TOKEN_SIDE) ** 2
        per_tile = (self.tile_size // PIXELS_PER_TOKEN_SIDE) ** 2 if self.tile_size else 0
        return per_view + tiles * per_tile + SEPARATOR_TOKENS


@dataclass(frozen=True)
class ModeSpec:
    name: str
    view: ViewConfig
    note: str


_GLOBAL_768 = ViewConfig(view_size=768, tile_size=None, crop=False, min_tiles=0, max_tiles=0)
_GLOBAL_1024 = ViewConfig(view_size=1024, tile_size=None, crop=False, min_tiles=0, max_tiles=0)
_TILED = ViewConfig(view_size=1024, tile_size=768, crop=True, min_tiles=2, max_tiles=6)

MODES: dict[str, ModeSpec] = {
    "tiny": ModeSpec("tiny", _GLOBAL_768, "v1 512px view; v2's smallest view is 768 (145 tokens)"),
    "small": ModeSpec("small", _GLOBAL_768, "v1 640px view; v2 has no 640 view, same as tiny (145 tokens)"),
    "base": ModeSpec("base", _GLOBAL_1024, "1024 global view, aspect kept by padding (257 tokens)"),
    "large": ModeSpec(
        "large", _TILED, "v1 1280px view; v2 has none, so extra detail comes from 768 tiles, same as gundam"
    ),
    "gundam": ModeSpec(
        "gundam", _TILED, "1024 global view + 2..6 tiles of 768 when the page exceeds 768 px (257..1121 tokens)"
    ),
}


def resolve_mode(name: str) -> ModeSpec:
    """The spec for a validated mode name (the schema has already refused unknown names)."""
    return MODES[name]
