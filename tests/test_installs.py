"""What each install provides: the core runs the bundled models without any optional package, a missing optional
package names the extra that installs it, and pyproject.toml keeps the extras the project documents."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement

from sana_wm_cli.main import main as cli_main
from sana_wm_env.evaluation import report
from sana_wm_env.trajectories import load
from world_model.checkpoints import load_transformer

ROOT = Path(__file__).resolve().parents[1]
# packages that only one feature needs: none of them may load with the environments and the bundled models
OPTIONAL = ("diffusers", "transformers", "huggingface_hub", "matplotlib", "rosbags", "stable_baselines3", "pygame",
            "skimage", "modelopt", "ray")


def _run(code: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                          env=env).stdout


def test_bundled_model_env_loads_no_optional_package():
    code = (
        "import sys\n"
        "import world_model, sana_wm_env, gymnasium as gym\n"
        "env = gym.make('SanaWM-Nav-v0')\n"
        "env.reset(seed=0)\n"
        "env.step(env.action_space.sample())\n"
        f"print(sorted(m for m in {OPTIONAL!r} if m in sys.modules))\n"
    )
    assert _run(code).strip() == "[]"


def test_ltx2_codec_without_diffusers_names_the_extra():
    code = (
        "import sys\n"
        "sys.modules['diffusers'] = None  # as if not installed\n"
        "import world_model\n"
        "from world_model.codecs import build_codec\n"
        "for load in (lambda: world_model.LTX2Codec, lambda: build_codec({'type': 'ltx2', 'path': 'x'})):\n"
        "    try:\n"
        "        load()\n"
        "    except ImportError as err:\n"
        "        print(err)\n"
    )
    lines = _run(code).strip().splitlines()
    assert len(lines) == 2 and all('the LTX-2 codec needs' in x and 'pip install "sana-wm-env[ltx2]"' in x
                                   for x in lines)


def test_missing_optional_packages_name_their_extra(monkeypatch, trajectory_data, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "rosbags.highlevel", None)
    bag = trajectory_data / "nav2_turtlebot.mcap"
    with pytest.raises(ImportError, match=r'reading ROS 2 bags needs .*pip install "sana-wm-env\[bags\]"'):
        load(bag, topic="/odom")
    # the CLI ends with one line naming the extra (exit code 1), before any model loads
    code = cli_main(["replay", str(bag), "--topic", "/odom", "--twin", "rooms/0", "--out", str(tmp_path / "r.mp4")])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and 'pip install "sana-wm-env[bags]"' in err, err
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    frames = np.zeros((1, 8, 8, 3), np.uint8)
    with pytest.raises(ImportError, match=r'evaluation figures needs .*pip install "sana-wm-env\[reports\]"'):
        report.contact_sheet({"frame_indices": [0], "ground_truth": {"rooms": frames}}, tmp_path / "sheet.png")
    monkeypatch.setitem(sys.modules, "ray", None)
    code = cli_main(["dataset", "make", "--clips", "1", "--frames", "4", "--size", "8x8", "--out",
                     str(tmp_path / "twin"), "--no-progress", "--ray"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and 'pip install "sana-wm-env[ray]"' in err, err
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(ImportError, match=r'Hugging Face repo id needs .*pip install "sana-wm-env\[ltx2\]"'):
        load_transformer("owner/not-a-local-folder")


def test_extras_keep_single_feature_packages_out_of_the_core():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"])
    for name in ("diffusers", "transformers", "huggingface-hub", "matplotlib", "rosbags", "triton", "modelopt"):
        assert name not in core, name
    extras = project["optional-dependencies"]
    assert {"ltx2", "refiner", "bags", "reports", "rl", "play", "kernels", "ray", "dev"} <= set(extras)
    assert "test" not in extras
    for name, reqs in extras.items():  # exact pins only where one ROS distribution's wheels must match
        pinned = [r for r in reqs if any(s.operator in ("==", "===") for s in Requirement(r).specifier)]
        assert name == "ros" or not pinned, (name, pinned)
    dev = " ".join(extras["dev"])
    for extra in ("rl", "play", "bags", "reports", "ltx2", "refiner"):
        assert extra in dev.split("[", 1)[1].split("]", 1)[0].split(","), extra
    assert "ray" not in dev  # the scale-out extra is large and only the slow tier uses it
    assert any(r.startswith("diffusers") and "<" in r for r in extras["ltx2"])  # we import its internals
