"""Bakes DeepSeek-OCR or DeepSeek-OCR-2 weights into the image at build time, so cold starts never
download.

Models: deepseek-ai/DeepSeek-OCR-2 (the default; vLLM serves it, and transformers loads the same files
with the worker's config conversion), deepseek-ai/DeepSeek-OCR (v1; vLLM only) and
deepseek-community/DeepSeek-OCR-2 (transformers' own format). The family comes from `architectures`
in config.json and is recorded in the manifest.

Downloads MODEL_NAME at MODEL_REVISION (resolved to its commit, which is what gets downloaded and
recorded) into OUT with only the files the worker loads, or copies them from a local directory
(`--source-dir`: air-gapped builds, and the tests, which bake the tiny checkpoint this way). Then it
verifies what it got (config, processor and tokenizer load; every safetensors file is complete and
the index's shards exist) and writes `manifest.json` (model, revision, file sizes and sha256) that
the worker reports. Any failure exits non-zero: a broken download fails the build, not the first job.

Self-contained on purpose: the Dockerfile runs it before the worker code is copied in, so editing
the worker never invalidates the 6.7 GB weights layer.

Usage: python builder/download_model.py [--model NAME] [--revision REV] [--out DIR] [--source-dir DIR]
Environment: MODEL_NAME, MODEL_REVISION, BASE_PATH (default /models), HF_TOKEN; a build secret
mounted at /run/secrets/hf_token is read when present.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import shutil
import struct
import sys
import time
from pathlib import Path

DEFAULT_MODEL = "deepseek-ai/DeepSeek-OCR-2"
DEFAULT_REVISION = "main"
DEFAULT_BASE_PATH = "/models"
MODEL_DIR_NAME = "model"
# architectures in config.json -> family. Kept here (not imported from the worker) because the builder
# runs before the worker's code is in the image; worker/families.py has the same table.
FAMILIES = {"DeepseekOCR2ForCausalLM": "deepseek-ocr-2", "DeepseekOcr2ForConditionalGeneration": "deepseek-ocr-2",
            "DeepseekOCRForCausalLM": "deepseek-ocr"}
MANIFEST = "manifest.json"
TOKEN_SECRET = Path("/run/secrets/hf_token")
# What the native transformers classes load; remote code (*.py), .bin weights and docs stay out.
ALLOW_PATTERNS = ("*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken")
IGNORE_NAMES = (MANIFEST,)


class BakeError(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.environ.get("MODEL_NAME") or DEFAULT_MODEL)
    parser.add_argument("--revision", default=os.environ.get("MODEL_REVISION") or DEFAULT_REVISION)
    parser.add_argument("--out", type=Path,
                        default=Path(os.environ.get("BASE_PATH") or DEFAULT_BASE_PATH) / MODEL_DIR_NAME)
    parser.add_argument("--source-dir", type=Path, help="copy from this local checkpoint instead of the hub")
    args = parser.parse_args(argv)
    try:
        manifest = bake(args.model, args.revision, args.out, args.source_dir)
    except BakeError as exc:
        print(f"download_model: {exc}", file=sys.stderr)
        return 1
    print(f"baked {manifest['model']}@{manifest['revision']} into {args.out} "
          f"({sum(f['size'] for f in manifest['files'])} bytes, {len(manifest['files'])} files)")
    return 0


def bake(model: str, revision: str, out: Path, source_dir: Path | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    if source_dir is not None:
        revision = copy_local(source_dir, out, revision)
        source = "local"
    else:
        revision = download(model, revision, out)
        source = "huggingface"
    family = verify(out)
    manifest = {
        "model": model,
        "revision": revision,
        "family": family,
        "source": source,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": [describe_file(out, path) for path in sorted(p for p in out.rglob("*") if p.is_file())
                  if path.name not in IGNORE_NAMES and not _hidden(path, out)],
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def copy_local(source_dir: Path, out: Path, revision: str) -> str:
    if not (source_dir / "config.json").is_file():
        raise BakeError(f"--source-dir {source_dir} holds no config.json")
    for path in sorted(source_dir.rglob("*")):
        relative = path.relative_to(source_dir)
        if path.is_file() and _allowed(relative.name) and not _hidden(path, source_dir):
            (out / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, out / relative)
    return revision if revision != DEFAULT_REVISION else "local"


def download(model: str, revision: str, out: Path) -> str:
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    token = read_token()
    try:
        # Download by commit, never by moving branch: the manifest then names exactly what is baked.
        commit = HfApi(token=token).model_info(model, revision=revision).sha or revision
        snapshot_download(repo_id=model, revision=commit, local_dir=out, allow_patterns=list(ALLOW_PATTERNS),
                          token=token)
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise BakeError(f"downloading {model}@{revision} failed: {type(exc).__name__}: {exc}") from None
    shutil.rmtree(out / ".cache", ignore_errors=True)
    return commit


def read_token() -> str | None:
    if TOKEN_SECRET.is_file():
        return TOKEN_SECRET.read_text().strip() or None
    return os.environ.get("HF_TOKEN") or None


def verify(out: Path) -> str:
    """Config, tokenizer (and, for transformers' format, processor) load; weights are complete.
    Returns the family. Raises BakeError."""
    config_file = out / "config.json"
    if not config_file.is_file():
        raise BakeError(f"{out} has no config.json")
    weights = sorted(out.glob("*.safetensors"))
    if not weights:
        raise BakeError(f"{out} has no .safetensors weights")
    for path in weights:
        check_safetensors(path)
    index = out / "model.safetensors.index.json"
    if index.is_file():
        shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
        missing = sorted(s for s in shards if not (out / s).is_file())
        if missing:
            raise BakeError(f"shards listed in the index are missing: {', '.join(missing)}")
    try:
        config = json.loads(config_file.read_text())
    except ValueError as exc:
        raise BakeError(f"{config_file} is not JSON: {exc}") from None
    architectures = config.get("architectures") or []
    family = next((FAMILIES[a] for a in architectures if a in FAMILIES), None)
    if family is None:
        raise BakeError(f"{out} holds {architectures}, not DeepSeek-OCR or DeepSeek-OCR-2 "
                        f"(expected one of {', '.join(FAMILIES)})")
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
        if "DeepseekOcr2ForConditionalGeneration" in architectures:
            from transformers import AutoProcessor

            AutoProcessor.from_pretrained(out, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - any load failure means a broken bake
        raise BakeError(f"the checkpoint in {out} does not load: {type(exc).__name__}: {exc}") from None
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    if image_id is None or image_id == tokenizer.unk_token_id:
        raise BakeError("the tokenizer has no <image> token")
    expected = config.get("image_token_id")
    if expected is not None and image_id != expected:
        raise BakeError(f"the tokenizer's <image> id ({image_id}) does not match the config's image_token_id "
                        f"({expected})")
    return family


def check_safetensors(path: Path) -> None:
    """A safetensors file is complete when its header parses and the data it declares fits the file."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        raw = handle.read(8)
        if len(raw) != 8:
            raise BakeError(f"{path.name} is truncated ({size} bytes)")
        header_len = struct.unpack("<Q", raw)[0]
        if header_len > size - 8:
            raise BakeError(f"{path.name} is truncated: header of {header_len} bytes in a {size}-byte file")
        try:
            header = json.loads(handle.read(header_len))
        except ValueError:
            raise BakeError(f"{path.name} has a corrupt header") from None
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if 8 + header_len + end != size:
        raise BakeError(f"{path.name} is incomplete: expected {8 + header_len + end} bytes, found {size}")


def describe_file(root: Path, path: Path) -> dict:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"path": str(path.relative_to(root)), "size": path.stat().st_size, "sha256": digest.hexdigest()}


def _allowed(name: str) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in ALLOW_PATTERNS) and name not in IGNORE_NAMES


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


if __name__ == "__main__":
    sys.exit(main())
