"""SANA-WM world model: the transformer, camera maths, samplers, generators, codecs and checkpoints.

Knows nothing of Gymnasium or ROS. Conventions: camera poses are OpenCV camera-to-world 4x4
(+x right, +y down, +z forward), metres and radians; intrinsics are ``[fx, fy, cx, cy]`` in pixels.
``LTX2Codec`` is imported on first use: it needs diffusers (the ``ltx2`` extra).
"""

from .bundles import WorldModel, load_world_model, save_world_model, untrained_world_model
from .cache import StreamCache
from .camera import CameraInputs, camera_inputs_from_world, prepare_camera
from .checkpoints import (
    CheckpointError,
    CheckpointNotFoundError,
    build_transformer,
    load_transformer,
    save_transformer,
)
from .codecs import LatentCodec, PatchCodec, build_codec
from .config import PRESETS, ModelConfig, get_config
from .generators import BidirectionalGenerator, ChunkCausalGenerator, GeneratorState, StreamingGenerator
from .sampling import DISTILLED_TIMESTEPS, distilled_sigmas, flow_sigmas
from .transformer import SanaWMTransformer

__all__ = [
    "DISTILLED_TIMESTEPS",
    "PRESETS",
    "BidirectionalGenerator",
    "CameraInputs",
    "CheckpointError",
    "CheckpointNotFoundError",
    "ChunkCausalGenerator",
    "GeneratorState",
    "LTX2Codec",
    "LatentCodec",
    "ModelConfig",
    "PatchCodec",
    "SanaWMTransformer",
    "StreamCache",
    "StreamingGenerator",
    "WorldModel",
    "build_codec",
    "build_transformer",
    "camera_inputs_from_world",
    "distilled_sigmas",
    "flow_sigmas",
    "get_config",
    "load_transformer",
    "load_world_model",
    "prepare_camera",
    "save_transformer",
    "save_world_model",
    "untrained_world_model",
]


def __getattr__(name: str):
    """``LTX2Codec`` on first use (its module imports diffusers; the bundled models do not need it)."""
    if name == "LTX2Codec":
        from .codecs import LTX2Codec

        return LTX2Codec
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
