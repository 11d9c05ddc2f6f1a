"""Training datasets from the twin worlds: the ``sana-wm-twin/1`` writer and a PyTorch Dataset reading it back."""

from sana_wm_env.datasets.writer import FORMAT, DatasetSpec, clip_plan, make_clip, make_dataset

__all__ = ["FORMAT", "DatasetSpec", "TwinClipDataset", "clip_plan", "make_clip", "make_dataset"]


def __getattr__(name: str):
    if name == "TwinClipDataset":
        from sana_wm_env.datasets.torch_dataset import TwinClipDataset

        return TwinClipDataset
    raise AttributeError(name)
