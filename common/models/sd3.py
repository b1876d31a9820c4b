"""Stable Diffusion 3 split at the input of the VAE decoder (TTI).

* ``head``: prompt -> the three text encoders (two CLIP, one T5) -> MMDiT denoising loop
  (flow-matching Euler, classifier-free guidance) from seeded noise -> latents, then the
  VAE's ``latents / scaling_factor + shift_factor`` -> features ``(16, H/8, W/8)``.
  The scaling and shift are applied **before** the split (on the edge): the features are
  exactly the tensor that ``vae.decode`` takes.
* ``tail``: ``vae.decode(features)`` -> image (HxWx3 uint8, values rounded from [0, 1]).

The seed of the initial noise comes with the prompt (`Prompt.seed`; a plain string
uses the CRC-32 of its text), so a prompt gives the same image in every process.
"""

from __future__ import annotations

import os
import threading
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from splitfc.common.errors import SplitfcError
from splitfc.common.models import register_family
from splitfc.common.models._common import load_pretrained, setup_torch, torch_dtype
from splitfc.common.models.base import Prompt, SplitModel, TaskOutput, check_features
from splitfc.common.settings import model_settings
from splitfc.common.specs import SplitSpec, get_split

HUB_ID = "stabilityai/stable-diffusion-3-medium-diffusers"
TINY_SEED = 20240603


@dataclass(frozen=True)
class Sampling:
    """Image size and sampler settings of a preset."""

    height: int
    width: int
    steps: int
    guidance_scale: float
    max_sequence_length: int


SAMPLING = {
    "paper": Sampling(1024, 1024, 28, 7.0, 256),
    "tiny": Sampling(128, 128, 4, 7.0, 77),
}


def as_prompt(inputs: Any) -> Prompt:
    """A `Prompt` from itself, a string (seed = CRC-32 of the text) or a dict with ``text``."""
    if isinstance(inputs, Prompt):
        return inputs
    if isinstance(inputs, str):
        return Prompt(inputs, zlib.crc32(inputs.encode()))
    if isinstance(inputs, dict) and "text" in inputs:
        text = str(inputs["text"])
        return Prompt(text, int(inputs.get("seed", zlib.crc32(text.encode()))))
    raise SplitfcError(f"sd3-tti expects a text prompt, got {type(inputs).__name__}")


def tiny_pipeline() -> Any:
    """A `StableDiffusion3Pipeline` of tiny random components (seeded) and offline tokenizers."""
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from splitfc.common.models.tiny_tokenizers import clip_tokenizer, t5_tokenizer

    clip_tok, t5_tok = clip_tokenizer(), t5_tokenizer()
    clip_tok.model_max_length = 77
    t5_tok.model_max_length = 512

    def clip_encoder() -> Any:
        return CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=len(clip_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, projection_dim=32, max_position_embeddings=77,
            bos_token_id=clip_tok.bos_token_id, eos_token_id=clip_tok.eos_token_id,
            pad_token_id=clip_tok.pad_token_id, hidden_act="gelu",
        ))

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        text_encoder, text_encoder_2 = clip_encoder(), clip_encoder()
        text_encoder_3 = T5EncoderModel(T5Config(
            vocab_size=len(t5_tok), d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
            pad_token_id=t5_tok.pad_token_id, eos_token_id=t5_tok.eos_token_id,
            decoder_start_token_id=t5_tok.pad_token_id,
        ))
        transformer = SD3Transformer2DModel(
            sample_size=16, patch_size=2, in_channels=16, num_layers=4, attention_head_dim=32,
            num_attention_heads=4, joint_attention_dim=64, caption_projection_dim=128,
            pooled_projection_dim=64, out_channels=16, pos_embed_max_size=32,
        )
        vae = AutoencoderKL(
            in_channels=3, out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8, 16, 32, 32), layers_per_block=1, latent_channels=16,
            norm_num_groups=8, use_quant_conv=False, use_post_quant_conv=False,
            scaling_factor=1.5305, shift_factor=0.0609,
        )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=scheduler, vae=vae,
        text_encoder=text_encoder.eval(), tokenizer=clip_tok,
        text_encoder_2=text_encoder_2.eval(), tokenizer_2=clip_tok,
        text_encoder_3=text_encoder_3.eval(), tokenizer_3=t5_tok,
    )


class SD3Split(SplitModel):
    """SD3 cut at the VAE decoder input."""

    def __init__(self, spec: SplitSpec, preset: str, pipeline: Any, sampling: Sampling) -> None:
        setup_torch()
        pipeline.set_progress_bar_config(disable=True)
        self.spec = spec
        self.preset = preset
        self.pipeline = pipeline
        steps = model_settings().sd3_steps
        self.sampling = sampling if steps is None else Sampling(
            sampling.height, sampling.width, steps, sampling.guidance_scale, sampling.max_sequence_length
        )
        self.scale = pipeline.vae_scale_factor
        self._pipeline_lock = threading.Lock()  # the pipeline and its scheduler keep per-call state
        self.channels = int(pipeline.vae.config.latent_channels)
        self.model_name = (
            "tiny StableDiffusion3Pipeline (2 CLIP, T5, SD3Transformer2DModel 4 layers, AutoencoderKL 16 ch)"
            if preset == "tiny" else str(getattr(pipeline, "name_or_path", "") or HUB_ID)
        )

    def expected_shape(self) -> tuple[int | None, ...]:
        s = self.sampling
        return (self.channels, s.height // self.scale, s.width // self.scale)

    def _run(self, inputs: Any, output_type: str) -> Any:
        import torch

        prompt = as_prompt(inputs)
        s = self.sampling
        generator = torch.Generator(device="cpu").manual_seed(prompt.seed)
        with self._pipeline_lock, torch.no_grad():
            return self.pipeline(
                prompt=prompt.text, height=s.height, width=s.width, num_inference_steps=s.steps,
                guidance_scale=s.guidance_scale, generator=generator, output_type=output_type,
                max_sequence_length=s.max_sequence_length,
            ).images

    def head(self, inputs: Any) -> np.ndarray:
        latents = self._run(inputs, "latent")
        vae = self.pipeline.vae.config
        features = latents / vae.scaling_factor + vae.shift_factor
        return np.ascontiguousarray(features[0].float().numpy())

    def tail(self, features: np.ndarray) -> TaskOutput:
        import torch

        x = check_features(features, self.spec, self.expected_shape(), self.preset)
        vae = self.pipeline.vae
        with torch.no_grad():
            decoded = vae.decode(torch.from_numpy(x)[None].to(vae.dtype), return_dict=False)[0]
            image = self.pipeline.image_processor.postprocess(decoded, output_type="np")[0]
        return TaskOutput(task="tti", image=_to_uint8(image))

    def forward_unsplit(self, inputs: Any) -> TaskOutput:
        return TaskOutput(task="tti", image=_to_uint8(self._run(inputs, "np")[0]))


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.asarray(image, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def build(
    split_id: str, preset: str, source: str | os.PathLike | None = None, sampling: Sampling | None = None
) -> SD3Split:
    """``tiny``: a pipeline of tiny random components; ``paper``: SD3-medium (diffusers layout).

    ``sampling`` overrides the preset's image size and sampler settings.
    """
    spec = get_split(split_id)
    if preset == "tiny":
        return SD3Split(spec, preset, tiny_pipeline(), sampling or SAMPLING["tiny"])
    from diffusers import StableDiffusion3Pipeline

    pipeline = load_pretrained(StableDiffusion3Pipeline, HUB_ID, source, dtype=torch_dtype())
    return SD3Split(spec, preset, pipeline, sampling or SAMPLING["paper"])


register_family("sd3", build)
