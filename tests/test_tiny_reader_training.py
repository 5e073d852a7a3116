"""The tiny reader's training pipeline (issue 3): its fast page views are the processor's, its cell
labels sit where the ink is, its words are single tokens, and the script writes a checkpoint the
worker's engine loads with the script's configuration."""

from __future__ import annotations

import json
import random

import pytest
import torch
import train_tiny_reader as trainer
from PIL import Image
from tiny_model import build_processor, build_tokenizer

from worker.modes import MODES

SIZES = [(500, 400), (760, 300), (1200, 900), (2000, 2800), (1900, 350)]


@pytest.fixture(scope="module")
def processor():
    return build_processor(build_tokenizer(trainer.load_words())).image_processor


def _page(size, seed=0) -> trainer.WordPage:
    rng = random.Random(seed)
    return trainer.render_word_page("VOLCANO", rng, width=(size[0], size[0]), height=(size[1], size[1]))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("mode", ["tiny", "base", "gundam"])
def test_fast_views_equal_the_processor(processor, size, mode):
    page = _page(size)
    view = MODES[mode].view
    expected = processor([page.image.convert("RGB")], return_tensors="pt", **view.processor_kwargs())
    assert torch.equal(trainer.global_view(page.image, view.view_size), expected["pixel_values"][0])
    tiles = trainer.local_tiles(page.image, view)
    assert len(tiles) == int(expected["num_local_patches"][0])
    if tiles:
        assert torch.equal(torch.stack(tiles), expected["pixel_values_local"])


def _ink_cells(view: torch.Tensor) -> torch.Tensor:
    grid = view.shape[-1] // trainer.CELL
    dark = (view[0] < -0.5).float()  # black ink; the grey padding is ~0
    return dark.reshape(grid, trainer.CELL, grid, trainer.CELL).sum((1, 3)).flatten() > 0


def _dilate(mask: torch.Tensor) -> torch.Tensor:
    grid = int(mask.numel() ** 0.5)
    m = mask.view(1, 1, grid, grid).float()
    return (torch.nn.functional.max_pool2d(m, 3, 1, 1) > 0).flatten()


@pytest.mark.parametrize("size", SIZES)
def test_cell_labels_sit_on_the_ink(size):
    """Every cell with ink is labelled with the word, and no label is more than a cell from ink."""
    for seed in range(3):
        page = _page(size, seed)
        views = [(trainer.global_view(page.image, 1024), trainer.global_cell_labels(page, 1024, 5))]
        tiled = MODES["gundam"].view
        views += list(zip(trainer.local_tiles(page.image, tiled), trainer.tile_cell_labels(page, 5, tiled)))
        assert any(_ink_cells(v).any() for v, _ in views)
        for view, labels in views:
            ink, labelled = _ink_cells(view), labels == 5
            assert set(labels.unique().tolist()) <= {5, trainer.BLANK}
            assert not (ink & ~labelled).any()
            assert not (labelled & ~_dilate(ink)).any()


def test_every_word_is_one_token_and_a_clash_is_refused():
    words = trainer.load_words()
    assert len(words) >= 16 and len(set(words)) == len(words) and all(w.isupper() for w in words)
    tokenizer = build_tokenizer(words)
    assert all(len(tokenizer.tokenize(w)) == 1 for w in words)
    with pytest.raises(ValueError, match="MARBLE"):
        build_tokenizer(["LEMON", "MARBLE"])  # LEMON's L+E merge breaks MARBLE's chain


def test_batch_labels_the_word_and_eos_and_expands_the_image_tokens():
    words = trainer.load_words()
    tokenizer = build_tokenizer(words)
    pages = [_page((1200, 900), 1), _page((500, 400), 2)]
    batch = trainer.make_batch(pages, "tiled", tokenizer, words)
    model_inputs = batch["model"]
    tiled = MODES["gundam"].view
    assert model_inputs["num_local_patches"] == [len(trainer.local_tiles(p.image, tiled)) for p in pages]
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    for row, tiles in zip(model_inputs["input_ids"], model_inputs["num_local_patches"]):
        assert int((row == image_id).sum()) == 256 + 144 * tiles + 1
    labelled = model_inputs["labels"][model_inputs["labels"] != -100].view(2, 2)
    assert labelled[:, 0].tolist() == [tokenizer.convert_tokens_to_ids("VOLCANO")] * 2
    assert labelled[:, 1].tolist() == [tokenizer.eos_token_id] * 2


def test_script_writes_a_checkpoint_the_worker_loads(tmp_path):
    from worker.engine import Engine
    from worker.pages import PageInput
    from worker.schema import GuardConfig
    from worker.settings import Settings

    out = tmp_path / "reader"
    cfg = trainer.train(out, steps=2, vision_steps=1)
    recorded = json.loads((out / "training.json").read_text())
    assert recorded["seed"] == trainer.SETTINGS["seed"] and recorded["steps"] == 2
    assert recorded["vision_steps"] == 1 and recorded["init"] == "fan_in"
    assert recorded["model"] == trainer.SETTINGS["model"] and cfg["train_seconds"] > 0
    assert (out / "words.txt").read_text().split() == trainer.load_words()

    engine = Engine.load(Settings(model_path=out, device="cpu"))
    expected = trainer.build_model(trainer.SETTINGS, build_tokenizer(trainer.load_words())).config
    loaded = engine.model.config
    assert loaded.vision_config.sam_config.to_dict() == expected.vision_config.sam_config.to_dict()
    assert loaded.text_config.hidden_size == expected.text_config.hidden_size
    assert loaded.text_config.num_hidden_layers == expected.text_config.num_hidden_layers
    page = Image.new("RGB", (600, 400), "white")
    [generation] = engine.generate([PageInput(image=page, prompt=trainer.PROMPT, view=MODES["tiny"].view,
                                              max_tokens=2, guard=GuardConfig(0, 1))])
    assert 1 <= generation.completion_tokens <= 2 and generation.vision_tokens == 145


def _model_and_batch(pages=None):
    words = trainer.load_words()
    tokenizer = build_tokenizer(words)
    torch.manual_seed(0)
    model = trainer.build_model(trainer.SETTINGS, tokenizer)
    pages = pages or [_page((600, 500), 1), _page((1200, 900), 2)]
    return model, trainer.make_batch(pages, "768", tokenizer, words), words


def _answer_attention(model, batch):
    """Each decoder layer's attention from the position that predicts the word, over the tokens before it."""
    model.config._attn_implementation = "eager"  # attention weights are returned by eager only
    with torch.no_grad():
        out = model.eval()(**batch["model"], output_attentions=True)
    return [layer[:, :, -3, :-2] for layer in out.attentions]


def test_fan_in_init_scales_weights_and_starts_decoder_attention_uniform():
    model, batch, _ = _model_and_batch()
    default = _answer_attention(model, batch)
    trainer.fan_in_init(model)
    params = dict(model.named_parameters())
    for name in ("model.vision_tower.sam_encoder.patch_embed.projection.weight",  # conv, fan-in 3*16*16
                 "model.vision_tower.vision_encoder.layers.0.mlp.up_proj.weight",
                 "model.language_model.layers.1.mlp.experts.gate_up_proj"):  # (experts, out, in)
        weight = params[name]
        fan_in = weight.shape[-1] if weight.dim() == 3 else weight[0].numel()
        assert abs(weight.std().item() * fan_in ** 0.5 - 1) < 0.15, name
    assert abs(params["model.vision_tower.query_768_resolution.weight"].std().item() - 1) < 0.1

    def uniform(attention):
        return torch.allclose(attention, torch.full_like(attention, 1 / attention.shape[-1]), atol=1e-6)

    # Every decoder layer starts as a plain mean over the page's tokens; the default init does not.
    assert all(uniform(layer) for layer in _answer_attention(model, batch))
    assert not any(uniform(layer) for layer in default)


def test_head_learns_at_the_multiplied_rate_and_every_parameter_is_in_one_group():
    model, _, words = _model_and_batch()
    aux = trainer.DeepSupervision(model, len(words))
    cfg = dict(trainer.SETTINGS, lr=1e-3, head_lr_multiplier=10)
    rest, head = trainer.parameter_groups(model, aux, cfg)
    assert rest["lr"] == 1e-3 and head["lr"] == pytest.approx(1e-2)
    assert {id(p) for p in head["params"]} == {id(model.lm_head.weight),
                                               id(model.model.language_model.norm.weight)}
    grouped = [id(p) for p in rest["params"] + head["params"]]
    assert len(grouped) == len(set(grouped))
    assert set(grouped) == {id(p) for p in list(model.parameters()) + aux.parameters()}


def test_vision_only_step_trains_the_vision_tower_and_leaves_the_decoder_alone():
    model, batch, words = _model_and_batch()
    aux = trainer.DeepSupervision(model, len(words))
    lm, aux_loss = trainer.losses(model, aux, batch, vision_only=True)
    (lm + aux_loss).backward()
    assert lm.item() == 0 and aux_loss.item() > 0
    tower = model.model.vision_tower
    assert tower.sam_encoder.patch_embed.projection.weight.grad.abs().sum() > 0
    assert tower.query_768_resolution.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.model.language_model.parameters())
    assert model.lm_head.weight.grad is None
    # The full step reaches the decoder.
    model.zero_grad(set_to_none=True)
    lm, aux_loss = trainer.losses(model, aux, batch)
    (lm + aux_loss).backward()
    assert lm.item() > 0 and model.lm_head.weight.grad.abs().sum() > 0
