"""Bad input to `sana-wm`: one line on stderr naming the file or flag and what to do, exit code 2, no traceback,
and nothing expensive (no model load, no env) before the check; absurd sizes are refused with the number and the
limit. Every input is a real file written to tmp_path."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import sana_wm_cli.eval as eval_cli
from sana_wm_cli.main import main

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "first_frame.png"


def _one_line_error(argv: list[str], capsys) -> str:
    """Run ``sana-wm ARGV``; assert exit code 2 and a single stderr line without a traceback; return that line."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if a command loads a world model (bad input must be caught before)."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model loaded before the input was checked")

    monkeypatch.setattr(eval_cli, "load_model_or_explain", refuse)


def _bad_trajectories(data: Path, tmp: Path) -> dict[str, tuple[Path, str]]:
    """name -> (a damaged or foreign trajectory written under ``tmp``, text the error must contain); the bags
    are those of the real recordings cut short, overwritten or replaced."""
    mcap = (data / "nav2_turtlebot.mcap").read_bytes()
    db3 = (data / "tf_example" / "tf_example.db3").read_bytes()
    cases: dict[str, tuple[Path, str]] = {}

    def write(name: str, content: bytes, expect: str) -> None:
        (tmp / name).write_bytes(content)
        cases[name] = (tmp / name, expect)

    def sqlite_bag(name: str, content: bytes) -> None:
        (tmp / name).mkdir()
        shutil.copy(data / "tf_example" / "metadata.yaml", tmp / name)
        (tmp / name / "tf_example.db3").write_bytes(content)
        cases[name] = (tmp / name, "is not a readable ROS 2 bag")

    write("truncated.mcap", mcap[: len(mcap) // 2], "is not a readable ROS 2 bag")
    write("garbage.mcap", os.urandom(4096), "is not a readable ROS 2 bag")
    write("zeroed.mcap", bytes(4096), "is not a readable ROS 2 bag")
    n = len(mcap)
    write("zeroed_middle.mcap", mcap[: n // 3] + bytes(n // 3) + mcap[2 * n // 3 :], "is not a readable ROS 2 bag")
    sqlite_bag("truncated_bag", db3[: len(db3) // 3])
    sqlite_bag("garbage_bag", os.urandom(8192))
    sqlite_bag("zeroed_bag", bytes(8192))
    np.savez(tmp / "good.npz", c2w=np.tile(np.eye(4), (5, 1, 1)))
    good = (tmp / "good.npz").read_bytes()
    write("truncated.npz", good[: len(good) // 2], "is not a trajectory .npz")
    write("garbage.npz", os.urandom(3000), "is not a trajectory .npz")
    write("garbage.npy", os.urandom(3000), "is not a trajectory .npy")
    (tmp / "folder").mkdir()
    cases["folder"] = (tmp / "folder", "no metadata.yaml")
    write("binary.txt", b"1.0 0 0 0 0 0 0 1\n" + os.urandom(64).replace(b"\n", b"\xff") + b"\n", ":2: binary data")
    write("nan_stamp.csv", b"#timestamp, p_x, p_y, p_z, q_w, q_x, q_y, q_z\n1000,0,0,0,1,0,0,0\nnan,0,0,0,1,0,0,0\n",
          ":3: row contains NaN")
    write("seconds_stamp.csv", b"1403715273.26,0,0,0,1,0,0,0\n1403715273.31,0,0,0,1,0,0,0\n",
          ":1: timestamp '1403715273.26' is not a whole number of nanoseconds")
    return cases


def test_damaged_or_foreign_trajectories_fail_in_one_line_before_the_model(trajectory_data, tmp_path, capsys,
                                                                          no_model_load):
    cases = _bad_trajectories(trajectory_data, tmp_path)
    for name, (path, expect) in cases.items():
        out = tmp_path / f"{name}.mp4"
        select = ["--topic", "/odom"] if name.endswith(".mcap") else \
            ["--parent-frame", "odom", "--child-frame", "base_link"] if name.endswith("_bag") else []
        line = _one_line_error(["replay", str(path), *select, "--image", str(EXAMPLE), "--out", str(out)], capsys)
        assert line.startswith("sana-wm replay: error: ") and str(path) in line and expect in line, (name, line)
        assert "pickled" not in line, line  # a foreign .npz is "not a trajectory", not a pickle question
        assert not out.exists()
    # a folder given as a text trajectory
    line = _one_line_error(["replay", str(tmp_path / "folder"), "--format", "tum", "--image", str(EXAMPLE),
                            "--out", str(tmp_path / "f.mp4")], capsys)
    assert f"{tmp_path / 'folder'} is a folder; a tum trajectory is a file" in line
    assert len(cases) == 14


def test_dataset_json_that_is_not_an_object(tmp_path, capsys):
    for name, text, expect in (
        ("list", "[1, 2, 3]", "holds a JSON list, not an object"),
        ("string", '"sana-wm-twin/1"', "holds a JSON str, not an object"),
        ("broken", '{\n  "format": "sana-wm-twin/1",\n  clips: 3\n}', ":3: not valid JSON"),
        ("missing", '{"format": "sana-wm-twin/1", "clips": 3}', "not the settings of a sana-wm-twin/1 dataset"),
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / "dataset.json").write_text(text)
        line = _one_line_error(["dataset", "info", str(tmp_path / name)], capsys)
        assert str(tmp_path / name / "dataset.json") in line and expect in line, line
    from sana_wm_env.datasets import TwinClipDataset

    with pytest.raises(ValueError, match="holds a JSON list, not an object"):
        TwinClipDataset(tmp_path / "list")


def test_servo_policy_with_a_garbage_file_names_it_and_loads_nothing(tmp_path, capsys, monkeypatch):
    import sana_wm_env.evaluation.policy as policy_eval

    def refuse(*args, **kwargs):
        raise AssertionError("envs were built before --policy was checked")

    monkeypatch.setattr(policy_eval, "make_eval_envs", refuse)
    (tmp_path / "text.pt").write_text("garbage\n")
    (tmp_path / "random.pt").write_bytes(os.urandom(1000))
    (tmp_path / "empty.pt").write_bytes(b"")
    for name in ("text.pt", "random.pt", "empty.pt"):
        path = tmp_path / name
        line = _one_line_error(["evaluate-policy", "--task", "imagenav", "--policy", f"servo:{path}", "--twin-only",
                                "--episodes", "1"], capsys)
        assert f"--policy: {path} is not a relative-pose network file" in line, line
        assert "pretrain_relative_pose" in line and "weights_only" not in line, line
    line = _one_line_error(["evaluate-policy", "--policy", f"servo:{tmp_path / 'none.pt'}", "--twin-only"], capsys)
    assert "no relative-pose network at" in line
    # an RLlib module is a folder: a file or a missing path is named before any env is built
    for target in (tmp_path / "text.pt", tmp_path / "no_module"):
        line = _one_line_error(["evaluate-policy", "--policy", f"rllib:{target}", "--twin-only"], capsys)
        assert f"no RLlib module folder at {target}" in line, line


def test_generate_fps_is_checked_before_the_model(tmp_path, capsys, monkeypatch):
    import sana_wm_cli.generate as generate_cli

    def refuse(args):
        raise AssertionError("the model was built before --fps was checked")

    monkeypatch.setattr(generate_cli, "build_model", refuse)
    base = ["generate", "--random-init", "--model", "small-cpu", "--image", str(EXAMPLE), "--out",
            str(tmp_path / "x.mp4")]
    assert "--fps must be a positive number, got 0.0" in _one_line_error([*base, "--fps", "0"], capsys)
    assert "--fps must be a positive number" in _one_line_error([*base, "--fps", "nan"], capsys)
    line = _one_line_error([*base, "--fps", "100000"], capsys)
    assert "--fps 100000 is more than the limit of 1000" in line


def test_threads_are_capped_at_the_cores(capsys):
    import torch

    from sana_wm_cli import set_torch_threads
    from sana_wm_env.limits import cpu_cores

    set_torch_threads(100000)
    assert torch.get_num_threads() == cpu_cores()
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"sana-wm: warning: --threads 100000 is more than the {cpu_cores()} CPU core(s) here; "
                   f"using {cpu_cores()}"]


def test_replay_refuses_absurd_frame_counts_before_the_model(trajectory_data, tmp_path, capsys, no_model_load):
    traj = str(trajectory_data / "V102_groundtruth.csv")  # 83.5 s
    base = ["replay", traj, "--image", str(EXAMPLE), "--out", str(tmp_path / "r.mp4")]
    line = _one_line_error([*base, "--fps", "100000"], capsys)
    assert "--fps 100000 is more than the limit of 1000" in line
    line = _one_line_error([*base, "--time-scale", "1e8"], capsys)
    assert "--time-scale" in line and "frames, more than the limit of 100,000" in line and "--max-frames" in line
    assert "133,6" in line  # 83.5 s x 16 fps x 1e8: the count itself
    line = _one_line_error([*base, "--fps", "900", "--max-frames", "1000"], capsys)
    assert "75,1" in line and "more than the limit of 1,000" in line  # the override flag sets the limit


def test_demo_refuses_an_absurd_scale_or_length_before_the_model(tmp_path, capsys, no_model_load):
    base = ["demo", "--out", str(tmp_path / "d.mp4")]
    line = _one_line_error([*base, "--scale", "1000"], capsys)
    assert "--scale 1000" in line and "more than the limit of 8,192 pixels a side" in line and "use --scale" in line
    line = _one_line_error([*base, "--seconds", "1e7"], capsys)
    assert "--seconds 1e+07" in line and "more than the limit of 100,000" in line
    line = _one_line_error([*base, "--scale", "60", "--seconds", "60"], capsys)
    assert "of frames in memory, more than the limit of 16 GiB" in line


def test_dataset_make_refuses_absurd_clips_before_any_work(tmp_path, capsys):
    out = tmp_path / "twin"
    base = ["dataset", "make", "--clips", "1", "--out", str(out), "--no-progress"]
    line = _one_line_error([*base, "--frames", "1e8"], capsys)
    assert "frames per clip (--frames): 100,000,000 frames, more than the limit of 100,000" in line
    line = _one_line_error([*base, "--frames", "50000", "--size", "512x512"], capsys)
    assert "(--frames, --size): about 36.6 GiB of frames in memory, more than the limit of 16 GiB" in line
    assert not out.exists()
    with pytest.raises(SystemExit) as exit_info:  # argparse's own error, exit code 2
        main([*base, "--frames", "1.5"])
    assert exit_info.value.code == 2 and "expected a whole number, got '1.5'" in capsys.readouterr().err
