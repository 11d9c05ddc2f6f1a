"""The `sana-wm` command end to end (real files, real video)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import pytest

from sana_wm_cli.main import main

pytestmark = pytest.mark.usefixtures("one_thread")
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "first_frame.png"


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "generate" in out and "info" in out


def test_info_prints_presets(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "sana-wm-1.6b: 2,661.8M params" in out and "GGGSGGGSGGGSGGGSGGGS" in out


def test_generate_writes_a_video(tmp_path, capsys):
    out = tmp_path / "clip.mp4"
    code = main(["generate", "--random-init", "--model", "small-cpu", "--image", str(EXAMPLE), "--fov", "70",
                 "--size", "32x32", "--chunks", "2", "--yaw", "20", "--out", str(out)])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    frames = iio.imread(out)
    assert frames.shape == (7, 32, 32, 3) and summary["frames"] == 7


def test_generate_errors_say_what_to_do(tmp_path, capsys):
    assert main(["generate", "--model", "small-cpu", "--image", str(EXAMPLE), "--out", str(tmp_path / "x.mp4")]) == 2
    assert "--random-init" in capsys.readouterr().err
    assert main(["generate", "--model", str(tmp_path / "nowhere"), "--image", str(EXAMPLE)]) == 2
    assert "no world-model bundle" in capsys.readouterr().err
    assert main(["generate", "--random-init", "--model", "small-cpu", "--image", str(tmp_path / "missing.png")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["generate", "--random-init", "--model", "small-cpu", "--image", str(EXAMPLE), "--size", "64"]) == 2
    assert "HxW" in capsys.readouterr().err


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "sana_wm_cli.main", "info", "--model", "tiny-text"],
                            capture_output=True, text=True, check=True)
    assert '"depth": 4' in result.stdout


def test_generate_with_a_depth_map_and_without(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    with Image.open(EXAMPLE) as im:
        w, h = im.size
    np.save(tmp_path / "depth.npy", np.full((h, w), 3.0, np.float32))
    Image.fromarray(np.full((h, w), 3000, np.uint16)).save(tmp_path / "depth.png")  # millimetres
    base = ["generate", "--random-init", "--model", "tiny-geo", "--image", str(EXAMPLE), "--size", "16x16",
            "--chunks", "2"]
    for extra in (["--depth", str(tmp_path / "depth.npy")], ["--depth", str(tmp_path / "depth.png")], []):
        out = tmp_path / f"clip{len(extra)}.mp4"
        assert main([*base, *extra, "--out", str(out)]) == 0, capsys.readouterr().err
        assert iio.imread(out).shape == (5, 16, 16, 3)
    np.save(tmp_path / "small.npy", np.ones((4, 4), np.float32))
    assert main([*base, "--depth", str(tmp_path / "small.npy"), "--out", str(tmp_path / "x.mp4")]) == 2
    assert "--depth is 4x4 (HxW) but its image is" in capsys.readouterr().err
    assert main(["generate", "--random-init", "--model", "small-cpu", "--image", str(EXAMPLE), "--size", "32x32",
                 "--depth", str(tmp_path / "depth.npy"), "--out", str(tmp_path / "y.mp4")]) == 2
    assert "does not use depth" in capsys.readouterr().err


def test_output_paths_are_checked_before_any_model_or_episode(tmp_path, capsys, monkeypatch):
    import sana_wm_cli.eval as eval_cli
    import sana_wm_cli.generate as generate_cli
    import sana_wm_env.envs.world_model_env as envs
    import sana_wm_env.evaluation.policy as policy

    def too_late(*args, **kwargs):
        raise AssertionError("work started before the output paths were checked")

    for module, name in ((eval_cli, "load_model_or_explain"), (generate_cli, "load_world_model"),
                         (generate_cli, "untrained_world_model"), (policy, "make_eval_envs"),
                         (envs, "WorldModelEnv"), (envs, "TwinEnv")):
        monkeypatch.setattr(module, name, too_late)
    folder, file = tmp_path / "folder", tmp_path / "file"
    folder.mkdir()
    file.write_text("keep")
    image = tmp_path / "first.png"
    image.write_bytes(EXAMPLE.read_bytes())
    gen = ["generate", "--random-init", "--model", "small-cpu", "--image", str(image)]
    cases = [
        (["evaluate-policy", "--twin-only", "--episodes", "1", "--json", str(folder)], "--json", "is a folder"),
        (["eval", "--json", str(folder)], "--json", "is a folder"),
        (["eval", "--json", str(file / "r.json")], "--json", "is a file, not a folder"),
        (["eval", "--json", str(tmp_path / "r.json"), "--out-dir", str(file)], "--out-dir", "is a file"),
        ([*gen, "--out", str(folder)], "--out", "is a folder"),
        ([*gen, "--out", str(image.with_suffix(".gif")), "--depth", str(image.with_suffix(".gif"))], "--out",
         "would replace the input --depth"),
        ([*gen, "--out", str(tmp_path / "clip.txt")], "--out", "must end in .mp4 or .gif"),
        (["demo", "--out", str(folder)], "--out", "is a folder"),
        (["play", "--twin", "--out", str(file / "p.mp4")], "--out", "is a file, not a folder"),
        (["train", "--data", str(tmp_path), "--out", str(file)], "--out", "is a file; give --out a folder"),
        (["dataset", "make", "--clips", "1", "--frames", "4", "--out", str(file)], "--out", "is a file"),
    ]
    for argv, flag, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert f"error: {flag} " in err and message in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert file.read_text() == "keep" and list(folder.iterdir()) == []


def test_ctrl_c_anywhere_is_one_line_and_exit_code_130(capsys, monkeypatch):
    import sana_wm_cli.info as info_cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(info_cli, "run", interrupted)  # the parser is built per call: it takes this one
    assert main(["info"]) == 130
    assert capsys.readouterr().err == "sana-wm info: interrupted; the outputs of this run were not completed\n"
