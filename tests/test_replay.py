"""`sana-wm replay` on the real recordings (short windows) and the streaming replay underneath it."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from sana_wm_cli.main import main
from sana_wm_env.replay import place_in_scene, prepare_path, stream_replay
from sana_wm_env.trajectories import Trajectory, camera_mount, load
from world_model.bundles import DEFAULT_NAME

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "first_frame.png"
pytestmark = pytest.mark.usefixtures("one_thread")


def _replay(args: list[str], capsys) -> tuple[int, str]:
    code = main(["replay", *args, "--threads", "1"])
    return code, capsys.readouterr().err


def _outputs(out: Path) -> tuple[np.ndarray, Trajectory, dict]:
    return iio.imread(out), load(out.with_suffix(".tum")), json.loads(out.with_suffix(".json").read_text())


# ---------------------------------------------------------------------------------------------------- real data
def test_euroc_drone_flight_writes_video_tum_and_sidecar(trajectory_data, tmp_path, capsys):
    out = tmp_path / "v102.mp4"
    code, err = _replay([str(trajectory_data / "V102_groundtruth.csv"), "--image", str(EXAMPLE), "--start", "10",
                         "--duration", "1.5", "--mount", "0,0,0,0,10,0", "--out", str(out)], capsys)
    assert code == 0, err
    video, tum, meta = _outputs(out)
    assert video.shape == (25, 64, 64, 3) and meta["frames"] == 25 and len(tum) == 25
    assert meta["model"] == DEFAULT_NAME and meta["fps"] == 16.0 and meta["mount_xyz_rpy_deg"][4] == 10
    assert meta["trajectory"]["window_s"] == [10.0, 11.5] and meta["seconds"] > 0
    # The TUM file holds the camera poses actually rendered: relative to the first, stamped in the recording clock.
    traj = load(trajectory_data / "V102_groundtruth.csv")
    expected = prepare_path(traj, fps=16.0, start=10, duration=1.5,
                            mount=camera_mount((0, 0, 0), np.radians([0, 10, 0])))
    np.testing.assert_allclose(tum.poses, expected.c2w, atol=1e-9)
    np.testing.assert_allclose(tum.poses[0], np.eye(4), atol=1e-12)
    np.testing.assert_allclose(tum.timestamps, traj.timestamps[0] + 10 + np.arange(25) / 16.0, atol=1e-6)
    # The drone moves: the replayed camera path is not static, and frames change.
    assert np.linalg.norm(tum.positions[-1]) > 0.05
    assert np.abs(video[-1].astype(int) - video[0].astype(int)).mean() > 1.0


def test_tum_handheld_camera_needs_its_convention(trajectory_data, tmp_path, capsys):
    path = str(trajectory_data / "freiburg1_xyz-groundtruth.txt")
    out = tmp_path / "fr1.mp4"
    code, err = _replay([path, "--image", str(EXAMPLE), "--duration", "1", "--out", str(out)], capsys)
    assert code == 2 and "--convention opencv" in err and not out.exists()
    code, err = _replay([path, "--image", str(EXAMPLE), "--convention", "opencv", "--duration", "1",
                         "--time-scale", "2", "--fov", "60", "--out", str(out)], capsys)
    assert code == 0, err
    video, tum, meta = _outputs(out)
    # --time-scale 2 plays the recorded second twice as slowly: 2 s of video at 16 fps.
    assert video.shape[0] == len(tum) == 33 and meta["trajectory"]["rendered_seconds_of_recording"] == 1.0
    np.testing.assert_allclose(np.diff(tum.timestamps), 1 / 32, atol=1e-6)


def test_nav2_bag_with_twin_side_by_side(trajectory_data, tmp_path, capsys):
    out = tmp_path / "nav2.mp4"
    code, err = _replay([str(trajectory_data / "nav2_turtlebot.mcap"), "--topic", "/odom", "--mount", "0.1,0,0.2,0,0,0",
                         "--start", "30", "--duration", "1", "--twin", "rooms/0", "--out", str(out)], capsys)
    assert code == 0, err
    video, tum, meta = _outputs(out)
    assert video.shape == (17, 18 + 256, 2 * 256 + 4, 3) and len(tum) == 17
    twin = meta["twin"]
    assert twin["scene"] == "rooms/0" and 5.0 < twin["psnr_db_mean"] < 100.0
    # The twin path is the replayed path placed in the scene: same relative motion.
    start = np.asarray(twin["start_c2w"])
    np.testing.assert_allclose(start[:3, 1], [0, 0, -1], atol=1e-9)  # level start camera (image down = world down)
    assert meta["intrinsics_source"] == "twin camera (model fov)"


def test_stamp_gap_fails_with_where_or_is_interpolated_when_allowed(trajectory_data, tmp_path, capsys):
    bag = str(trajectory_data / "nav2_turtlebot.mcap")
    out = tmp_path / "gap.mp4"
    args = [bag, "--topic", "/odom", "--image", str(EXAMPLE), "--start", "40", "--duration", "1.5", "--out", str(out)]
    code, err = _replay(args, capsys)
    assert code == 2 and "1.764 s gap" in err and "40.82 s into the recording" in err and "--max-gap" in err
    assert not out.exists()
    code, err = _replay([*args, "--max-gap", "2"], capsys)
    assert code == 0, err
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["trajectory"]["largest_stamp_gap_s"] == pytest.approx(1.764, abs=1e-3)


def test_bad_inputs_fail_before_generation(trajectory_data, tmp_path, capsys):
    traj = str(trajectory_data / "V102_groundtruth.csv")
    out = tmp_path / "bad.mp4"
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    cases = [
        (["--image", str(junk)], "not a readable image"),
        (["--image", str(EXAMPLE), "--intrinsics", "500,500,320,240"], "do not fit a 128x128"),
        (["--image", str(EXAMPLE), "--intrinsics", "500,500"], "fx,fy,cx,cy"),
        (["--image", str(EXAMPLE), "--duration", "0.05"], "shorter than one chunk"),
        (["--image", str(EXAMPLE), "--mount", "1,2,3"], "--mount must be 6 numbers"),
        ([], "--image FIRST.png is required"),
        (["--image", str(EXAMPLE), "--twin", "rooms/0"], "drop --image"),
        (["--image", str(EXAMPLE), "--start", "500"], "start must be in [0, 83.5"),
        (["--image", str(EXAMPLE), "--refine", str(tmp_path / "no_refiner")], "no refiner"),
    ]
    for extra, message in cases:
        code, err = _replay([traj, *extra, "--out", str(out)], capsys)
        assert code == 2 and message in err, (extra, err)
        assert not out.exists() and not out.with_suffix(".json").exists()


# ------------------------------------------------------------------------------------------------ library level
def _path(n: int, step=(0.02, 0.0, 0.05)) -> np.ndarray:
    c2w = np.tile(np.eye(4), (n, 1, 1))
    c2w[:, :3, 3] = np.arange(n)[:, None] * np.asarray(step)
    return c2w


def _run(wm, c2w, seed=0):
    gen = wm.streaming_generator()
    frames = []
    image = torch.linspace(-1, 1, 3 * 16 * 16).reshape(1, 3, 16, 16)
    k = torch.tensor([14.0, 14.0, 8.0, 8.0])
    stats = stream_replay(gen, image, k, c2w, seed=seed, on_chunk=lambda f, i, s: frames.append((i, f.clone())))
    return frames, stats


def test_same_seed_and_poses_give_same_frames(wm):
    a, _ = _run(wm, _path(11))
    b, _ = _run(wm, _path(11))
    c, _ = _run(wm, _path(11), seed=1)
    assert [i for i, _ in a] == [0, 1, 4, 7, 10]  # frame 0, then chunks of 3
    for (_, x), (_, y) in zip(a, b):
        assert torch.equal(x, y)
    assert not torch.equal(a[-1][1], c[-1][1])


def test_tail_is_padded_and_state_does_not_grow_with_length(wm):
    short, s_stats = _run(wm, _path(9))
    long, l_stats = _run(wm, _path(29))
    assert sum(len(f) for _, f in short) == 9 and s_stats["padded_tail_frames"] == 1
    assert sum(len(f) for _, f in long) == 29 and l_stats["padded_tail_frames"] == 2
    # Sink + window cache: the state stops growing after the first chunks, however long the path.
    bytes_ = l_stats["state_bytes"]
    assert len(bytes_) == 10 and bytes_[2] > 0 and len(set(bytes_[2:])) == 1
    assert bytes_[-1] == s_stats["state_bytes"][-1]
    # Causal: the frames of the first chunks do not depend on what comes later.
    for (_, x), (_, y) in zip(short[:2], long[:2]):
        assert torch.equal(x, y)


def test_prepare_path_conventions_window_and_time_scale():
    t = np.arange(0, 4.0, 0.01)
    body = np.tile(np.eye(4), (len(t), 1, 1))
    body[:, 0, 3] = t * 0.5  # driving forward along world x at 0.5 m/s
    traj = Trajectory(timestamps=t + 100.0, poses=body, convention="rep103")
    p = prepare_path(traj, fps=10.0, start=1.0, duration=2.0)
    assert len(p) == 21 and p.source_times[0] == pytest.approx(101.0)
    # The default mount looks along body +x: driving forward is +z in the camera frame.
    np.testing.assert_allclose(p.c2w[-1, :3, 3], [0, 0, 1.0], atol=1e-9)
    assert len(prepare_path(traj, fps=10.0, duration=2.0, time_scale=0.5)) == 11
    with pytest.raises(ValueError, match="unknown"):
        prepare_path(traj.with_convention("unknown"), fps=10.0)
    with pytest.raises(ValueError, match="mount applies only"):
        prepare_path(traj.with_convention("opencv"), fps=10.0, mount=np.eye(4))
    with pytest.raises(ValueError, match="time_scale must be a positive"):
        prepare_path(traj, fps=10.0, time_scale=0)


def test_place_in_scene_keeps_the_relative_path():
    from sana_wm_env.scenes import make_scene

    scene = make_scene("rooms", 0)
    rel = _path(20, step=(0.0, 0.0, 0.1))
    world = place_in_scene(scene, rel)
    np.testing.assert_allclose(np.linalg.inv(world[0]) @ world, rel, atol=1e-9)
    assert scene.free(world[:, :3, 3], 0.25).all()
    with pytest.raises(ValueError, match="does not fit"):
        place_in_scene(scene, _path(20, step=(0.0, 0.0, 5.0)), tries=50)


# ------------------------------------------------------------------------------------------------ outputs
def _fail_after(monkeypatch, chunks: int, error: BaseException) -> None:
    """Make the streaming replay raise ``error`` after ``chunks`` chunks were written (a mid-run failure)."""
    import sana_wm_env.replay as replay_module

    real = replay_module.stream_replay

    def failing(*args, on_chunk, **kwargs):
        seen = []

        def chunk(*a):
            on_chunk(*a)
            seen.append(1)
            if len(seen) >= chunks:
                raise error
        return real(*args, on_chunk=chunk, **kwargs)

    monkeypatch.setattr(replay_module, "stream_replay", failing)


def test_no_output_replaces_the_input_trajectory(trajectory_data, tmp_path, capsys):
    flight = tmp_path / "flight.tum"
    flight.write_bytes((trajectory_data / "freiburg1_xyz-groundtruth.txt").read_bytes())
    before = flight.read_bytes()
    code, err = _replay([str(flight), "--image", str(EXAMPLE), "--convention", "opencv", "--duration", "1",
                         "--out", str(tmp_path / "flight.mp4")], capsys)
    assert code == 2 and "TUM sidecar" in err and "would replace the input trajectory" in err and "--out" in err
    assert len(err.strip().splitlines()) == 1 and flight.read_bytes() == before
    assert not (tmp_path / "flight.mp4").exists() and not (tmp_path / "flight.json").exists()


def test_output_paths_are_checked_before_the_model_loads(trajectory_data, tmp_path, capsys, monkeypatch):
    import sana_wm_cli.eval as eval_cli

    def no_model(*a, **k):
        raise AssertionError("the model loaded before the output paths were checked")

    monkeypatch.setattr(eval_cli, "load_model_or_explain", no_model)
    traj = trajectory_data / "V102_groundtruth.csv"
    (tmp_path / "taken.json").mkdir()
    (tmp_path / "file").write_text("x")
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "rollout.json").write_text(json.dumps({"format": "sana-wm-rollout/1"}))
    cases = [
        (["--out", str(tmp_path / "taken.mp4")], "JSON sidecar"),  # taken.json is a folder
        (["--out", str(tmp_path / "dir.mp4")], "is a folder"),
        (["--out", str(tmp_path / "file" / "v.mp4")], "is a file, not a folder"),
        (["--out", str(tmp_path / "v.mp4"), "--save-rollout", str(tmp_path / "file")], "--save-rollout"),
        (["--out", str(tmp_path / "v.mp4"), "--save-rollout", str(tmp_path / "done")], "already holds a rollout"),
        (["--out", str(EXAMPLE.with_suffix(".mp4")), "--image", str(EXAMPLE.with_suffix(".mp4"))],
         "would replace the input --image"),
    ]
    (tmp_path / "dir.mp4").mkdir()
    for extra, message in cases:
        args = [str(traj), *(["--image", str(EXAMPLE)] if "--image" not in extra else []), *extra]
        code, err = _replay(args, capsys)
        assert code == 2 and message in err, (extra, err)
        assert not (tmp_path / "v.mp4").exists()


def test_failed_or_interrupted_runs_leave_the_earlier_outputs(trajectory_data, tmp_path, capsys, monkeypatch):
    from sana_wm_env.rollouts import read_rollout, validate_rollout

    out = tmp_path / "v.mp4"
    base = [str(trajectory_data / "V102_groundtruth.csv"), "--image", str(EXAMPLE), "--start", "10", "--out", str(out)]
    code, err = _replay([*base, "--duration", "1.5"], capsys)
    assert code == 0, err
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert set(before) == {"v.mp4", "v.tum", "v.json"}
    # A failure after two chunks: the error surfaces; the complete set of the earlier run stays, nothing else.
    with monkeypatch.context() as m:
        _fail_after(m, 2, RuntimeError("the GPU fell over"))
        with pytest.raises(RuntimeError, match="fell over"):
            _replay([*base, "--duration", "1"], capsys)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    # Ctrl-C with --save-rollout: one line, exit 130, the rollout kept but partial, which readers say.
    rollout = tmp_path / "ro"
    with monkeypatch.context() as m:
        _fail_after(m, 2, KeyboardInterrupt())
        code, err = _replay([*base, "--duration", "1", "--save-rollout", str(rollout)], capsys)
    assert code == 130 and "Traceback" not in err  # the progress bar, then one line
    assert err.strip().splitlines()[-1] == "sana-wm replay: interrupted; the outputs of this run were not completed"
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    with pytest.raises(ValueError, match=r"is partial, interrupted \(Ctrl-C\); record it again"):
        validate_rollout(rollout)
    partial = read_rollout(rollout, allow_partial=True)
    assert partial.manifest["partial"] and 1 < len(partial) < 17  # frame 0 and the first chunk
    # A shorter successful run replaces every output together, and its rollout replaces the partial one.
    code, err = _replay([*base, "--duration", "1", "--save-rollout", str(rollout)], capsys)
    assert code == 0, err
    video, tum, meta = _outputs(out)
    assert len(video) == len(tum) == meta["frames"] == 17 and len(read_rollout(rollout)) == 17
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ro", "v.json", "v.mp4", "v.tum"]
