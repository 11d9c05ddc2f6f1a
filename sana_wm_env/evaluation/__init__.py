"""Fidelity evaluation of world models against the twin worlds: metrics, the protocol, figures.

See :mod:`sana_wm_env.evaluation.fidelity` for the protocol (its settings in
:mod:`~sana_wm_env.evaluation.config`, its action-following distractors in
:mod:`~sana_wm_env.evaluation.perturbations`, its scores in :mod:`~sana_wm_env.evaluation.scores`) and
``sana-wm eval`` for the command.
"""

from sana_wm_env.evaluation.candidates import (
    Candidate,
    RepeatFirstFrame,
    TwinRenderOracle,
    WarpFirstFrame,
    generator_candidate,
    oracle_candidate,
    repeat_first_frame_candidate,
    untrained_like,
    warp_candidate,
    world_model_candidates,
)
from sana_wm_env.evaluation.config import EvalConfig
from sana_wm_env.evaluation.fidelity import evaluate, plan_episodes
from sana_wm_env.evaluation.metrics import PSNR_CAP_DB, psnr, ssim
from sana_wm_env.evaluation.scores import stability_stats, targets

__all__ = [
    "PSNR_CAP_DB", "Candidate", "EvalConfig", "RepeatFirstFrame", "TwinRenderOracle", "evaluate",
    "generator_candidate", "oracle_candidate", "plan_episodes", "psnr", "repeat_first_frame_candidate", "ssim",
    "stability_stats", "targets", "untrained_like", "WarpFirstFrame", "warp_candidate", "world_model_candidates",
]
