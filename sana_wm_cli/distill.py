"""``sana-wm distill``: distil a chunk-causal teacher into the 4-step streaming student (ODE regression).

The teacher is a ``sana-wm train`` run folder (its EMA ``model/``), a world-model bundle (its ``teacher/``,
else ``student/``) or a transformer folder (then --codec is required). For every clip the teacher samples
chunk by chunk from the clip's first frame along its poses; the student learns to land one Euler step from
each of the teacher's latents at [1000, 960, 889, 727] on the teacher's next one. At the end a bundle with
the student and the teacher is written (--export, default RUN_DIR/bundle).

--student-chunk-size 1 makes a student that streams one latent frame (2 video frames) per step from a teacher
with larger chunks (faster env steps and replies; see world_model.training.distill.Distiller).

Example:
  sana-wm distill --teacher runs/teacher --data data/twin64 --out runs/student --steps 500 --batch 2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .train import (
    FIELDS,
    add_common,
    add_export_options,
    explicit_overrides,
    finish,
    open_dataset,
    parse_codec,
    resolve_config,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("distill", help="distil the chunk-causal teacher into the few-step streaming student",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(p)
    add_export_options(p)
    p.add_argument("--teacher", default=None, help="train run folder, bundle folder or transformer folder")
    p.add_argument("--codec", default=None, help="patch:P[:S] or ltx2:PATH (only for a bare transformer folder)")
    p.add_argument("--teacher-steps", type=int, default=None, dest="teacher_steps_per_segment",
                   help="teacher Euler steps per student step (x4 = teacher steps; default 8)")
    p.add_argument("--teacher-shift", type=float, default=None, dest="teacher_shift")
    p.add_argument("--target", choices=("next", "x0"), default=None,
                   help="regress the teacher's next latent (default) or its final x0")
    p.add_argument("--init-from", default=None, dest="init_from",
                   help="start the student from this transformer folder (default: a copy of the teacher)")
    p.add_argument("--student-chunk-size", type=int, default=None, dest="student_chunk_size",
                   help="latent frames per student chunk (default: the teacher's); e.g. 1 for 2-frame streaming steps")
    p.set_defaults(func=run)


def resolve_teacher(path_text: str, codec_text: str | None) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(transformer folder, codec config, model config dict) of a run folder, bundle or transformer folder."""
    from world_model.checkpoints import load_transformer

    path = Path(path_text)
    if (path / "bundle.json").is_file():
        folder = path / "teacher" if (path / "teacher" / "config.json").is_file() else path / "student"
        codec = json.loads((path / "codec.json").read_text())
    elif (path / "model" / "config.json").is_file() and (path / "config.json").is_file():
        folder = path / "model"
        codec = json.loads((path / "config.json").read_text())["codec"]
    elif (path / "config.json").is_file():
        folder, codec = path, None
    else:
        raise FileNotFoundError(f"--teacher {path}: not a train run folder, a bundle or a transformer folder")
    model_cfg = load_transformer(folder).config
    if codec_text is not None:
        codec = parse_codec(codec_text, model_cfg.in_channels)
    if codec is None:
        raise ValueError(f"--teacher {path} is a bare transformer folder: pass --codec (e.g. patch:4)")
    return str(folder), codec, model_cfg.to_dict()


def run(args: argparse.Namespace) -> int:
    from world_model.training import DistillConfig, Distiller

    overrides = explicit_overrides(args, FIELDS + ("teacher_steps_per_segment", "teacher_shift", "target",
                                                 "student_chunk_size", "init_from"))
    if not args.resume:
        if args.teacher is None:
            raise ValueError("--teacher is required (a train run folder, a bundle or a transformer folder)")
        folder, codec, model = resolve_teacher(args.teacher, args.codec)
        overrides.update(teacher=folder, codec=codec, model=model)
    config = resolve_config(DistillConfig, args, overrides)
    dataset, fps = open_dataset(args, config.codec, config.max_latent_frames)
    config = config.replace(fps=fps) if not args.resume else config
    trainer = Distiller(config, dataset, args.out, device=args.device, resume=args.resume,
                        progress=not args.no_progress)
    summary = trainer.train()
    return finish(trainer, args, summary)
