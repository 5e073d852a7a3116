"""The worker as a process, through runpod's own one-job local mode."""

from __future__ import annotations

import shutil

from tests.helpers import ROOT, b64, encode, run_worker_once, text_page


def _page_b64() -> str:
    return b64(encode(text_page(["Hello worker"], size=(600, 500)), "PNG"))


def test_good_job_succeeds(tiny_checkpoint):
    proc = run_worker_once(tiny_checkpoint, {"image": _page_b64(), "mode": "tiny", "task": "ocr", "max_tokens": 6})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout + proc.stderr
    assert "completed successfully" in out and "'finish_reason'" in out and "'vision_tokens': 145" in out


def test_bad_job_exits_1_with_the_error_code(tiny_checkpoint):
    proc = run_worker_once(tiny_checkpoint, {"image": _page_b64(), "mode": "huge"})
    assert proc.returncode == 1
    assert "invalid_input: field 'mode'" in proc.stdout + proc.stderr


def test_undecodable_image_exits_1_with_invalid_image(tiny_checkpoint):
    proc = run_worker_once(tiny_checkpoint, {"image": b64(b"\x89PNG\r\n\x1a\nbroken"), "mode": "tiny"})
    assert proc.returncode == 1
    assert "invalid_image: field 'image'" in proc.stdout + proc.stderr


def test_repository_test_input_json_runs(tiny_checkpoint, tmp_path):
    shutil.copy(ROOT / "test_input.json", tmp_path / "test_input.json")
    proc = run_worker_once(tiny_checkpoint, None, cwd=tmp_path, MAX_TOKENS="4")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "'task': 'markdown'" in proc.stdout + proc.stderr


def test_missing_weights_stop_the_start_with_the_path(tmp_path):
    proc = run_worker_once(tmp_path / "no-model", {"image": _page_b64()})
    assert proc.returncode == 2
    assert f"MODEL_PATH={tmp_path / 'no-model'}" in proc.stderr and "download_model.py" in proc.stderr


def test_invalid_setting_stops_the_start_with_its_name(tiny_checkpoint):
    proc = run_worker_once(tiny_checkpoint, {"image": _page_b64()}, BATCH_SIZE="many")
    assert proc.returncode == 2 and "BATCH_SIZE" in proc.stderr
