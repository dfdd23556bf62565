"""Difix assembled on diffusers: reference attention, the one-step x0, the VAE skip path, weight
loading of a tiny pipeline saved in the published layout, padding, and the ``difix`` fixer.

Everything runs on tiny random configurations built here (UNet and VAE widths (32, 64), a
one-layer CLIP text encoder, a 54-token BPE vocabulary); nothing is downloaded.
"""

from __future__ import annotations

import json
import math
import string
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel  # noqa: E402
from diffusers.models.attention_processor import Attention  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel  # noqa: E402

from recon_core.components import RunContext  # noqa: E402
from recon_core.errors import InputError, MissingWeightsError  # noqa: E402
from recon_plugins.difix.attention import ReferenceAttnProcessor, ViewGrouping, install_reference_attention  # noqa: E402
from recon_plugins.difix.fixer import DifixConfig, DifixFixer  # noqa: E402
from recon_plugins.difix.model import (  # noqa: E402
    crop_to,
    decode_with_skips,
    encode_with_skips,
    pad_to_multiple,
    predict_x0,
    skip_conv_shapes,
)
from recon_plugins.difix.weights import load_difix, merge_lora, read_component_state  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

LORA_TARGETS = ("conv1", "conv2", "conv_in", "conv_shortcut", "conv", "conv_out",
                "skip_conv_1", "skip_conv_2", "to_k", "to_q", "to_v", "to_out.0")
"""Decoder module-name endings Difix puts its rank-4 LoRA on (nv-tlabs/Difix3D src/model.py)."""


# ------------------------------------------------------------------------------ tiny pipeline


def _tiny_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
    )


def _tiny_vae() -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4, layers_per_block=1, norm_num_groups=32, sample_size=32,
    )


def _peft_lora_state(vae_state: dict[str, torch.Tensor], modules: dict[str, torch.nn.Module], rank: int, seed: int) -> dict[str, torch.Tensor]:
    """The VAE state as peft saves it after ``add_adapter(LoraConfig(r=rank), 'vae_skip')`` on the decoder."""
    g = torch.Generator().manual_seed(seed)
    out = dict(vae_state)
    for name, module in modules.items():
        if not name.startswith("decoder.") or not name.endswith(LORA_TARGETS):
            continue
        if not isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            continue
        for p in ("weight", "bias"):
            if f"{name}.{p}" in out:
                out[f"{name}.base_layer.{p}"] = out.pop(f"{name}.{p}")
        if isinstance(module, torch.nn.Conv2d):
            A = torch.randn(rank, module.in_channels, *module.kernel_size, generator=g) * 0.05
            B = torch.randn(module.out_channels, rank, 1, 1, generator=g) * 0.05
        else:
            A = torch.randn(rank, module.in_features, generator=g) * 0.05
            B = torch.randn(module.out_features, rank, generator=g) * 0.05
        out[f"{name}.lora_A.vae_skip.weight"] = A
        out[f"{name}.lora_B.vae_skip.weight"] = B
    return out


def write_tiny_difix(folder: Path, seed: int = 0, prediction_type: str = "epsilon") -> dict[str, dict[str, torch.Tensor]]:
    """A tiny random Difix folder in the published layout; returns the saved state dicts per part."""
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "DifixPipeline"}))
    DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                  prediction_type=prediction_type).save_pretrained(folder / "scheduler")
    # tokenizer: single letters (+ end-of-word forms) and CLIP's two special tokens
    tok = folder / "tokenizer"
    tok.mkdir()
    letters = list(string.ascii_lowercase)
    vocab = {c: i for i, c in enumerate(letters + [c + "</w>" for c in letters] + ["<|startoftext|>", "<|endoftext|>"])}
    (tok / "vocab.json").write_text(json.dumps(vocab))
    (tok / "merges.txt").write_text("#version: 0.2\n")
    (tok / "tokenizer_config.json").write_text(json.dumps({
        "model_max_length": 16, "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}))
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                                        num_attention_heads=4, max_position_embeddings=16, projection_dim=32,
                                        bos_token_id=52, eos_token_id=53, pad_token_id=53))
    text.save_pretrained(folder / "text_encoder")
    unet = _tiny_unet()
    unet.save_pretrained(folder / "unet")
    vae = _tiny_vae()
    vae.save_pretrained(folder / "vae")
    # the published VAE: skip convs (trained, so not 1e-5 any more) and peft LoRA on the decoder
    state = load_file(str(folder / "vae" / "diffusion_pytorch_model.safetensors"))
    modules = dict(vae.named_modules())
    for i, (cin, cout) in enumerate(skip_conv_shapes(vae.config.block_out_channels)):
        conv = torch.nn.Conv2d(cin, cout, 1, bias=False)
        state[f"decoder.skip_conv_{i + 1}.weight"] = conv.weight.detach() * 0.5
        modules[f"decoder.skip_conv_{i + 1}"] = conv
    state = _peft_lora_state(state, modules, rank=4, seed=seed + 1)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "vae" / "diffusion_pytorch_model.safetensors"))
    config = json.loads((folder / "vae" / "config.json").read_text())
    config.update({"lora_rank": 4, "gamma": 1.0, "ignore_skip": False})
    (folder / "vae" / "config.json").write_text(json.dumps(config))
    return {
        "unet": load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors")),
        "vae": state,
        "text_encoder": load_file(str(folder / "text_encoder" / "model.safetensors")),
    }


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, torch.Tensor]]]:
    folder = tmp_path_factory.mktemp("difix") / "difix_ref"
    return folder, write_tiny_difix(folder)


# ------------------------------------------------------------------------------- attention


def test_reference_attention_equals_joint_attention_over_concatenated_tokens() -> None:
    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=2, dim_head=8)
    grouping = ViewGrouping(2)
    attn.set_processor(ReferenceAttnProcessor(type(attn.processor)(), grouping))
    b, v, n, d = 3, 2, 5, 16
    x = torch.randn(b * v, n, d)
    out = attn(x)
    # by hand: softmax(q k^T / sqrt(dh)) v per head over the 2n tokens of each sample
    for s in range(b):
        tokens = torch.cat([x[s * v + j] for j in range(v)])  # [(v n), d]
        q, k, val = attn.to_q(tokens), attn.to_k(tokens), attn.to_v(tokens)
        heads = lambda t: t.reshape(v * n, 2, 8).transpose(0, 1)  # noqa: E731
        w = torch.softmax(heads(q) @ heads(k).transpose(-1, -2) / math.sqrt(8), dim=-1)
        joint = attn.to_out[0]((w @ heads(val)).transpose(0, 1).reshape(v * n, d))
        for j in range(v):
            torch.testing.assert_close(out[s * v + j], joint[j * n:(j + 1) * n], atol=1e-5, rtol=1e-5)
    # it is not per-view attention, and grouping 1 is exactly that
    grouping.num_views = 1
    single = attn(x)
    assert (single - out).abs().max() > 1e-3
    grouping.num_views = 2
    cross = attn(x, encoder_hidden_states=torch.randn(b * v, 4, 16))  # cross-attention passes through per view
    assert cross.shape == x.shape


def test_install_reference_attention_only_touches_self_attention() -> None:
    unet = _tiny_unet()
    install_reference_attention(unet)
    procs = unet.attn_processors
    assert procs and all(isinstance(p, ReferenceAttnProcessor) == k.endswith("attn1.processor") for k, p in procs.items())
    assert sum(k.endswith("attn1.processor") for k in procs) == 4  # down 1, mid 1, up 2 (layers_per_block + 1)


# ------------------------------------------------------------------------------------- x0


def _scaled_linear_alpha_bar(t: int) -> float:
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return float(torch.cumprod(1 - betas, 0)[t])


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_predict_x0_matches_a_one_step_ddpm_scheduler(prediction_type: str) -> None:
    sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          prediction_type=prediction_type)
    sched.set_timesteps(timesteps=[199])
    x_t, out = torch.randn(2, 4, 6, 6, dtype=torch.float64), torch.randn(2, 4, 6, 6, dtype=torch.float64)
    ab = _scaled_linear_alpha_bar(199)
    ours = predict_x0(out, x_t, ab, prediction_type)
    theirs = sched.step(out, 199, x_t, generator=torch.Generator().manual_seed(0)).prev_sample
    torch.testing.assert_close(ours, theirs.double(), atol=1e-6, rtol=1e-6)  # the step adds only ~1e-10 noise
    if prediction_type == "epsilon":
        torch.testing.assert_close(ours, (x_t - math.sqrt(1 - ab) * out) / math.sqrt(ab))


def test_tiny_model_is_one_step_x0_decoded_with_skips(tiny) -> None:
    folder, _ = tiny
    model = load_difix(folder, reference=False)
    assert model.schedule.timestep == 199 and model.schedule.prediction_type == "epsilon"
    assert model.schedule.alpha_bar == pytest.approx(_scaled_linear_alpha_bar(199), rel=1e-6)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    mean, skips = encode_with_skips(model.vae, x)
    z = mean * model.scaling_factor  # no noise is added: the clean latent is x_t
    eps = model.unet(z, 199, encoder_hidden_states=model.prompt_embeds.expand(2, -1, -1)).sample
    ab = model.schedule.alpha_bar
    x0 = (z - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
    expected = decode_with_skips(model.vae, x0 / model.scaling_factor, skips).clamp(-1, 1)
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
    # the skip path is live: without it the decoder gives another image
    no_skip = decode_with_skips(model.vae, x0 / model.scaling_factor, [s * 0 for s in skips]).clamp(-1, 1)
    assert (no_skip - expected).abs().max() > 1e-4


def test_skip_conv_shapes_of_the_sd_vae() -> None:
    # nv-tlabs/Difix3D src/model.py: skip_conv_1 512->512, _2 256->512, _3 128->512, _4 128->256
    assert skip_conv_shapes((128, 256, 512, 512)) == [(512, 512), (256, 512), (128, 512), (128, 256)]


# -------------------------------------------------------------------------------- weights


def test_merge_lora_equals_base_plus_scaled_low_rank_path() -> None:
    torch.manual_seed(0)
    conv, lin = torch.nn.Conv2d(6, 5, 3, padding=1, stride=2), torch.nn.Linear(6, 5)
    A_c, B_c = torch.nn.Conv2d(6, 4, 3, padding=1, stride=2, bias=False), torch.nn.Conv2d(4, 5, 1, bias=False)
    A_l, B_l = torch.nn.Linear(6, 4, bias=False), torch.nn.Linear(4, 5, bias=False)
    state = {"c.base_layer.weight": conv.weight, "c.base_layer.bias": conv.bias, "c.lora_A.x.weight": A_c.weight,
             "c.lora_B.x.weight": B_c.weight, "l.base_layer.weight": lin.weight, "l.base_layer.bias": lin.bias,
             "l.lora_A.x.weight": A_l.weight, "l.lora_B.x.weight": B_l.weight, "other": torch.ones(2)}
    merged = merge_lora(state, lora_alpha=8.0)  # scale 8 / 4 = 2
    assert set(merged) == {"c.weight", "c.bias", "l.weight", "l.bias", "other"}
    x, y = torch.randn(2, 6, 9, 9), torch.randn(3, 6)
    with torch.no_grad():
        conv_ref = conv(x) + 2.0 * B_c(A_c(x))
        lin_ref = lin(y) + 2.0 * B_l(A_l(y))
        torch.testing.assert_close(torch.nn.functional.conv2d(x, merged["c.weight"], merged["c.bias"], stride=2, padding=1), conv_ref)
        torch.testing.assert_close(torch.nn.functional.linear(y, merged["l.weight"], merged["l.bias"]), lin_ref)


def test_loading_maps_every_key_of_a_tiny_saved_pipeline(tiny) -> None:
    folder, saved = tiny
    model = load_difix(folder, reference=True)
    unet_state = model.unet.state_dict()
    assert set(unet_state) == set(saved["unet"])
    assert all(torch.equal(unet_state[k], saved["unet"][k]) for k in unet_state)
    vae_state = model.vae.state_dict()
    merged = merge_lora(saved["vae"])
    assert set(vae_state) == set(merged)
    assert all(torch.equal(vae_state[k], merged[k]) for k in vae_state)
    lora_modules = {k.split(".lora_A.")[0] for k in saved["vae"] if ".lora_A." in k}
    assert {"decoder.skip_conv_1", "decoder.mid_block.attentions.0.to_q", "decoder.up_blocks.0.resnets.0.conv1"} <= lora_modules
    assert all(not torch.equal(vae_state[f"{m}.weight"], saved["vae"][f"{m}.base_layer.weight"]) for m in lora_modules)
    text = read_component_state(folder, "text_encoder")
    assert set(text) == set(saved["text_encoder"])
    assert model.prompt_embeds.shape == (1, 16, 32)


def test_loading_rejects_keys_that_do_not_fit(tiny, tmp_path: Path) -> None:
    folder, saved = tiny
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    state = dict(saved["unet"])
    state["extra.weight"] = torch.zeros(1)
    state.pop("conv_in.bias")
    save_file(state, str(bad / "unet" / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(InputError, match=r"1 missing key\(s\): conv_in.bias; 1 unexpected key\(s\): extra.weight"):
        load_difix(bad)
    (bad / "vae" / "config.json").unlink()
    with pytest.raises(InputError, match="missing vae/config.json"):
        load_difix(bad)


# ------------------------------------------------------------------------------- padding


@pytest.mark.parametrize("size", [(16, 16), (13, 10), (3, 21)])
def test_padding_round_trip(size: tuple[int, int]) -> None:
    x = torch.rand(2, 3, *size)
    padded = pad_to_multiple(x, 8)
    assert padded.shape[-2] % 8 == 0 and padded.shape[-1] % 8 == 0
    assert padded.shape[-2] - size[0] < 8 and padded.shape[-1] - size[1] < 8
    assert torch.equal(crop_to(padded, size), x)


# --------------------------------------------------------------------------------- fixer


def test_fixer_batches_references_and_odd_sizes(tiny) -> None:
    folder, _ = tiny
    fixer = DifixFixer(DifixConfig(weights_path=str(folder), batch_size=3))
    fixer.prepare(RunContext(torch.device("cpu"), seed=0))
    images, refs = torch.rand(4, 13, 10, 3), torch.rand(4, 13, 10, 3)
    fixed = fixer.fix(images, refs)
    assert fixed.shape == images.shape and fixed.dtype == torch.float32 and 0 <= fixed.min() and fixed.max() <= 1
    # one at a time gives the same: each render is paired with its own reference only
    single = DifixFixer(DifixConfig(weights_path=str(folder), batch_size=1))
    single.prepare(RunContext(torch.device("cpu"), seed=0))
    torch.testing.assert_close(single.fix(images, refs), fixed, atol=1e-5, rtol=1e-5)
    # the reference changes the result (joint attention), and reference=none ignores it
    assert (fixer.fix(images, torch.rand(4, 13, 10, 3)) - fixed).abs().max() > 1e-5
    plain = DifixFixer(DifixConfig(weights_path=str(folder), reference="none"))
    plain.prepare(RunContext(torch.device("cpu"), seed=0))
    torch.testing.assert_close(plain.fix(images, refs), plain.fix(images))
    with pytest.raises(InputError, match="references"):
        fixer.fix(images, refs[:2])


def test_reference_model_without_a_reference_is_an_input_error(tiny) -> None:
    # the original difix_ref (mv_unet.py) rearranges "(b v) n d" with v = 2 and fails on one view
    folder, _ = tiny
    fixer = DifixFixer(DifixConfig(weights_path=str(folder)))
    fixer.prepare(RunContext(torch.device("cpu"), seed=0))
    with pytest.raises(InputError, match="reference=none"):
        fixer.fix(torch.rand(1, 8, 8, 3))
    with pytest.raises(ValueError, match="needs a reference"):
        fixer.model(torch.zeros(1, 3, 8, 8))


def test_sampled_latent_is_mean_plus_std_times_seeded_noise(tiny) -> None:
    folder, _ = tiny
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    mean_model = load_difix(folder, reference=False)
    sample_model = load_difix(folder, reference=False, latent="sample")
    a = sample_model(x, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(sample_model(x, generator=torch.Generator().manual_seed(3)), a)  # seeded: reproducible
    assert (sample_model(x, generator=torch.Generator().manual_seed(4)) - a).abs().max() > 1e-4
    assert (mean_model(x) - a).abs().max() > 1e-4
    # by hand: the encoder's moments, mean + exp(logvar / 2) * eps with eps drawn as torch.randn
    enc = mean_model.vae
    h = enc.quant_conv(enc.encoder(x)) if enc.quant_conv is not None else enc.encoder(x)
    mean, logvar = h.chunk(2, dim=1)
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(3))
    z, skips = encode_with_skips(enc, x, sample=True, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(z, mean + torch.exp(0.5 * logvar.clamp(-30, 20)) * eps, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="latent"):
        load_difix(folder, reference=False, latent="mode")


def test_fit_resize_matches_lanczos_down_and_back(tiny) -> None:
    import numpy as np
    from PIL import Image

    folder, _ = tiny
    fixer = DifixFixer(DifixConfig(weights_path=str(folder), reference="none", fit="resize"))
    fixer.prepare(RunContext(torch.device("cpu"), seed=0))
    images = torch.rand(1, 19, 21, 3)
    fixed = fixer.fix(images)
    assert fixed.shape == images.shape
    # by hand: PIL Lanczos to 18 x 20 (the multiple of the tiny VAE's factor 2 below), the model, Lanczos back
    assert fixer.model.multiple == 2

    def lanczos(a: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return torch.stack([torch.tensor(np.asarray(Image.fromarray(c.numpy(), mode="F").resize((w, h), Image.LANCZOS)))
                            for c in a])
    x = lanczos(images[0].permute(2, 0, 1) * 2 - 1, 18, 20)[None]
    out = lanczos(fixer.model(x)[0], 19, 21)
    torch.testing.assert_close(fixed[0], ((out + 1) / 2).permute(1, 2, 0), atol=1e-5, rtol=1e-5)
    padded = DifixFixer(DifixConfig(weights_path=str(folder), reference="none"))
    padded.prepare(RunContext(torch.device("cpu"), seed=0))
    assert (padded.fix(images) - fixed).abs().max() > 1e-3


def test_text_encoder_keys_with_the_transformers_4_prefix_load(tiny, tmp_path: Path) -> None:
    # SD-Turbo's text_encoder/model.safetensors (transformers 4) names keys "text_model.…"
    import shutil

    folder, saved = tiny
    prefixed = tmp_path / "prefixed"
    shutil.copytree(folder, prefixed)
    save_file({f"text_model.{k}": v for k, v in saved["text_encoder"].items()},
              str(prefixed / "text_encoder" / "model.safetensors"))
    torch.testing.assert_close(load_difix(prefixed, reference=False).prompt_embeds, load_difix(folder, reference=False).prompt_embeds)


def test_missing_weights_name_the_repository_and_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECON_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(MissingWeightsError) as err:
        DifixFixer().prepare(RunContext(torch.device("cpu"), seed=0))
    assert err.value.filename == "nvidia/difix_ref" and err.value.expected_path == tmp_path / "weights" / "difix" / "difix_ref"
    assert "huggingface.co/nvidia/difix_ref" in str(err.value)
    paths = {w.source: w.path for w in DifixFixer.required_weights()}
    assert paths["https://huggingface.co/nvidia/difix"] == tmp_path / "weights" / "difix" / "difix"
    assert not any(w.present for w in DifixFixer.required_weights())


def test_weights_are_found_in_the_hugging_face_cache(tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, _ = tiny
    root = tmp_path / "hub" / "models--nvidia--difix_ref"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text("abc123")
    (root / "snapshots").mkdir()
    (root / "snapshots" / "abc123").symlink_to(folder, target_is_directory=True)
    monkeypatch.setenv("RECON_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert [w.present for w in DifixFixer.required_weights()] == [False, True]
    fixer = DifixFixer()
    fixer.prepare(RunContext(torch.device("cpu"), seed=0))
    assert fixer.fix(torch.rand(1, 8, 8, 3), torch.rand(1, 8, 8, 3)).shape == (1, 8, 8, 3)


def test_plugin_imports_and_reports_missing_dependency_without_diffusers() -> None:
    code = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('diffusers', 'transformers'):
            raise ImportError('blocked ' + name)
sys.meta_path.insert(0, Block())
import recon_plugins.difix as plugin
from recon_core.registry import Registry
r = Registry(entry_points=[], modules=[('difix', plugin)], disabled=[])
print(r.info('difix', 'fixer').status, r.info('nearest-gt', 'fixer').status, r.info('difix3d+', 'refiner').status)
print('diffusers' in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["missing-dependency", "ok", "ok", "False"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fixer_runs_in_float16_on_cuda(tiny) -> None:
    folder, _ = tiny
    images, refs = torch.rand(2, 16, 16, 3), torch.rand(2, 16, 16, 3)
    cpu = DifixFixer(DifixConfig(weights_path=str(folder)))
    cpu.prepare(RunContext(torch.device("cpu"), seed=0))
    gpu = DifixFixer(DifixConfig(weights_path=str(folder)))
    gpu.prepare(RunContext(torch.device("cuda"), seed=0))
    assert next(gpu.model.unet.parameters()).dtype == torch.float16
    fixed = gpu.fix(images.cuda(), refs.cuda())
    assert fixed.dtype == torch.float32 and fixed.device.type == "cuda"
    torch.testing.assert_close(fixed.cpu(), cpu.fix(images, refs), atol=2e-2, rtol=0)
