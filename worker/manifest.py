"""The bake manifest (`MODEL_PATH/manifest.json`, written by builder/download_model.py): which model
and revision the image holds. In: the model directory. Out: (name, revision), or None when the
weights were not baked by the builder (a mounted volume, a local checkout)."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import ConfigError

MANIFEST = "manifest.json"


def read_manifest(model_path: Path) -> tuple[str, str] | None:
    path = Path(model_path) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        return str(data["model"]), str(data["revision"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path} is not a valid bake manifest ({exc}); rebuild the image") from None
