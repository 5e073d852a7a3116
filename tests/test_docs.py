"""The deployment guide against what ships: RUNPOD_DEPLOYMENT.md, `.runpod/hub.json`, `.runpod/tests.json`,
Dockerfile.runpod and the worker's settings must tell one story (GPU pools, CUDA versions, build arguments,
settings and their defaults), since a reader follows the guide and RunPod follows the JSON."""

from __future__ import annotations

import json
import re

from tests.helpers import ROOT
from tests.test_shipping import setting_names
from worker.families import FAMILIES
from worker.settings import Settings

GUIDE = ROOT / "RUNPOD_DEPLOYMENT.md"
DOCKERFILE = ROOT / "Dockerfile.runpod"
# RunPod's serverless GPU pool ids (runpod SDK `GpuGroup`, plus the Blackwell pools of runpod-flash): a typo
# in gpuIds would otherwise only show as an endpoint that never gets a GPU.
RUNPOD_GPU_POOLS = frozenset({"AMPERE_16", "AMPERE_24", "ADA_24", "ADA_32_PRO", "AMPERE_48", "ADA_48_PRO",
                              "AMPERE_80", "ADA_80_PRO", "HOPPER_141", "BLACKWELL_96", "BLACKWELL_180"})
BACKTICKED = re.compile(r"`([^`]+)`")


def guide_text() -> str:
    return GUIDE.read_text()


def section(text: str, heading: str) -> str:
    """The text under `heading` (a whole markdown heading line) up to the next heading of the same or a
    higher level."""
    level = heading.split(" ", 1)[0]
    start = text.index(f"\n{heading}\n") + len(heading) + 2
    following = re.compile(rf"^#{{1,{len(level)}}} ", re.MULTILINE).search(text, start)
    return text[start:following.start() if following else len(text)]


def table_rows(text: str) -> list[list[str]]:
    """Body rows of the markdown tables in `text`, as stripped cells (header and rule rows dropped)."""
    rows: list[list[str]] = []
    for line in text.splitlines():
        if not line.startswith("|"):
            continue
        if set(line.strip()) <= set("|-: "):  # the rule under a header: the row before it was the header
            rows.pop()
            continue
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def only_backticked(cell: str) -> str | None:
    """The value of a cell that is exactly one `code` span, else None (a cell that explains its default)."""
    match = BACKTICKED.fullmatch(cell)
    return match.group(1) if match else None


def hub() -> dict:
    return json.loads((ROOT / ".runpod" / "hub.json").read_text())


def dockerfile_args() -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)", DOCKERFILE.read_text(), re.MULTILINE))


def version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def test_gpu_pools_of_the_guide_and_the_hub_listing_agree():
    guide_pools = [only_backticked(row[0]) for row in table_rows(section(guide_text(), "### GPUs"))]
    hub_pools = [pool for pool in hub()["config"]["gpuIds"].split(",") if not pool.startswith("-")]
    assert guide_pools == hub_pools, "RUNPOD_DEPLOYMENT.md's GPU table and hub.json's gpuIds differ"
    assert len(hub_pools) >= 2 and set(hub_pools) <= RUNPOD_GPU_POOLS, sorted(set(hub_pools) - RUNPOD_GPU_POOLS)


def test_cuda_versions_agree_and_start_at_the_images_cuda():
    text = guide_text()
    allowed = BACKTICKED.findall(re.search(r"^Allowed CUDA versions: (.+)$", text, re.MULTILINE).group(1))
    assert allowed == hub()["config"]["allowedCudaVersions"]
    tests_config = json.loads((ROOT / ".runpod" / "tests.json").read_text())["config"]
    assert tests_config["allowedCudaVersions"] == allowed
    # The guide names the base image the Dockerfile uses and its CUDA; no allowed host may be older.
    image, image_cuda = re.search(r"built on `([^`]+)`, a CUDA (\d+\.\d+) build", text).groups()
    assert image == dockerfile_args()["VLLM_IMAGE"]
    assert min(map(version, allowed)) == version(image_cuda)
    # The ten-minute path tells the reader to tick exactly these.
    quick = section(text, "## The ten-minute path")
    assert set(re.findall(r"\b(\d{2}\.\d)\b", quick)) == set(allowed)


def test_build_args_in_the_guide_exist_in_the_dockerfile_with_the_documented_defaults():
    text = guide_text()
    args = dockerfile_args()
    used = set(re.findall(r"--build-arg\s+([A-Z_][A-Z0-9_]*)=", text))
    assert {"MODEL_NAME", "MODEL_REVISION", "BAKE_MODEL", "VLLM_IMAGE"} <= used
    assert used <= set(args), f"the guide passes build args Dockerfile.runpod lacks: {sorted(used - set(args))}"
    documented = {only_backticked(row[0]): only_backticked(row[1])
                  for row in table_rows(section(text, "### Build arguments"))}
    assert documented == args, "the build-argument table must list every ARG with its default"


def test_hub_env_keys_are_settings_with_the_real_defaults():
    config = hub()["config"]
    known = setting_names()
    keys = {item["key"] for item in config["env"]} | {k for p in config["presets"] for k in p["defaults"]}
    assert keys <= known, f"hub.json names variables the worker does not read: {sorted(keys - known)}"
    defaults = Settings.from_env({})
    for item in config["env"]:
        offered = str(item["input"]["default"]).lower()
        assert Settings.from_env({item["key"]: offered}) == defaults, f"{item['key']}: hub default {offered}"
    # The image runs vLLM, which serves only the tiled view; a preset's DEFAULT_MODE must start either family.
    vllm_modes = set.intersection(*(set(f.mode_table("vllm")) for f in FAMILIES.values()))
    modes = {p["defaults"]["DEFAULT_MODE"] for p in config["presets"] if "DEFAULT_MODE" in p["defaults"]}
    assert modes and modes <= vllm_modes
    assert "DEFAULT_MODE" not in {item["key"] for item in config["env"]}, "vLLM offers no mode choice to make"


def test_every_setting_has_a_row_and_documented_defaults_are_the_real_ones():
    rows = table_rows(section(guide_text(), "## Environment variables"))
    documented = {only_backticked(row[0]): row[1] for row in rows}
    assert set(documented) == setting_names()
    defaults = Settings.from_env({})
    checked = 0
    for name, cell in documented.items():
        value = only_backticked(cell)
        if value is None:  # a default explained in words (the image's value, a derived size)
            continue
        assert Settings.from_env({name: value}) == defaults, f"{name}: the guide's default {value!r} is wrong"
        checked += 1
    assert checked >= 35, checked


def heading_anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_within_the_guide_reach_a_heading():
    text = guide_text()
    anchors = {heading_anchor(h) for h in re.findall(r"^#+ (.+)$", text, re.MULTILINE)}
    links = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert {"cold-start", "cuda-versions", "which-model-v1-or-v2"} <= links
    assert links <= anchors, f"links to no heading: {sorted(links - anchors)}"
