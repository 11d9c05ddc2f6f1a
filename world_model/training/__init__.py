"""Training the SANA-WM transformer on clip + camera-pose datasets, and distilling the streaming student.

- :mod:`.flow_matching`: timestep samplers (logit-normal with shift, the clean first-frame condition, the
  chunk-causal diffusion-forcing mixture) and the flow-matching loss.
- :mod:`.data`: the dataset item format, collation and deterministic step-indexed batches.
- :mod:`.trainer`: :class:`TrainConfig` and :class:`Trainer` (AdamW, EMA, clipping, bf16 on CUDA, progressive
  clip length, checkpoint/resume, metrics, sample videos).
- :mod:`.utils`: what the trainers share: atomic writes, RNG state snapshots, the EMA update, sample videos.
- :mod:`.distill`: :class:`DistillConfig` and :class:`Distiller` (ODE-regression distillation of the
  chunk-causal teacher into the few-step streaming student).
- :mod:`.refine`: :class:`RefinerTrainConfig` and :class:`RefinerTrainer` (a stage-2 refiner trained on stage-1
  rollouts re-noised in, ground truth out) and the stage-1 pairs they train on.
"""

from .data import collate_clips, item_to_tensors, latent_batch
from .distill import DistillConfig, Distiller, teacher_grid, teacher_rollout
from .flow_matching import (
    CHUNK_MODES,
    DEFAULT_CHUNK_MIXTURE,
    apply_first_frame_condition,
    flow_matching_loss,
    noise_latents,
    noisy_mask,
    sample_chunk_sigmas,
    sample_frame_sigmas,
)
from .refine import RefinerTrainConfig, RefinerTrainer, Stage1Pairs, write_stage1_pairs
from .trainer import TrainConfig, Trainer
from .utils import ema_decay_at, ema_update

__all__ = [
    "CHUNK_MODES",
    "DEFAULT_CHUNK_MIXTURE",
    "DistillConfig",
    "Distiller",
    "RefinerTrainConfig",
    "RefinerTrainer",
    "Stage1Pairs",
    "TrainConfig",
    "Trainer",
    "apply_first_frame_condition",
    "collate_clips",
    "ema_decay_at",
    "ema_update",
    "flow_matching_loss",
    "item_to_tensors",
    "latent_batch",
    "noise_latents",
    "noisy_mask",
    "sample_chunk_sigmas",
    "sample_frame_sigmas",
    "teacher_grid",
    "teacher_rollout",
    "write_stage1_pairs",
]
