"""Scale-out on Ray, against a real local Ray cluster (2 CPUs): the --ray paths give what the local paths give.

The slow tier only: starting Ray and its worker processes takes seconds. Skipped where the ``ray`` extra is not
installed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sana_wm_cli.main import main
from sana_wm_env.datasets.writer import DatasetSpec, clip_bytes, clip_path, make_dataset, store_clip

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    # one logical GPU (Ray's resources are declared, not probed): GPU-aware scheduling runs on a CPU machine too
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


def test_connect_starts_and_ends_a_local_instance_and_a_wrong_address_fails_at_once():
    ray = pytest.importorskip("ray")
    from sana_wm_env.distributed import connect

    assert not ray.is_initialized()  # runs before the module's cluster starts
    with connect("local", num_cpus=1) as started:
        assert started.is_initialized() and started.cluster_resources()["CPU"] == 1
    assert not ray.is_initialized()

    for address in ("127.0.0.1:1", "ray://127.0.0.1:1"):
        with pytest.raises(ValueError, match="no Ray cluster answers there"), connect(address):
            pass
    with pytest.raises(ValueError, match="expected auto, local, HOST:PORT"), connect("headnode"):
        pass


def _clips(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "clips").iterdir())}


def test_dataset_make_on_ray_writes_the_local_bytes_and_resumes(ray_cluster, tmp_path, capsys):
    spec = DatasetSpec(clips=4, frames=6, height=16, width=16, depth=True, seed=4)
    make_dataset(tmp_path / "local", spec, progress=False)
    args = ["dataset", "make", "--clips", "4", "--frames", "6", "--size", "16x16", "--depth", "--seed", "4",
            "--out", str(tmp_path / "ray"), "--no-progress", "--ray"]
    assert main(args) == 0 and "wrote 4 clip(s), 0 already present" in capsys.readouterr().out
    assert _clips(tmp_path / "ray") == _clips(tmp_path / "local")
    assert main(["dataset", "info", str(tmp_path / "ray")]) == 0 and "clips present: 4 / 4\n" in capsys.readouterr().out
    # resumable as the local path: a missing clip and a damaged one are rendered again, the same bytes
    clip_path(tmp_path / "ray", 1).unlink()
    clip_path(tmp_path / "ray", 2).write_bytes(b"not a zip")
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "wrote 2 clip(s), 2 already present" in out and out.count("rendered again: clip") == 1
    assert _clips(tmp_path / "ray") == _clips(tmp_path / "local")
    # --workers belongs to the local path
    assert main([*args, "--workers", "2"]) == 2 and "--workers" in capsys.readouterr().err


def test_a_killed_worker_is_retried_and_nothing_is_lost_or_duplicated(ray_cluster, tmp_path):
    from sana_wm_env.distributed import run_tasks

    spec = DatasetSpec(clips=3, frames=4, height=16, width=16, scenes=("rooms",), seed=1)
    marks = tmp_path / "attempts"
    marks.mkdir()

    def render_or_die(spec: DatasetSpec, index: int) -> bytes:
        """Clip 1's first attempt renders its clip, then its worker process dies before returning it."""
        (marks / f"{index}-{os.getpid()}").touch()
        data = clip_bytes(spec, index)
        if index == 1 and len(list(marks.glob("1-*"))) == 1:
            os._exit(1)
        return data

    root = tmp_path / "ray"
    (root / "clips").mkdir(parents=True)
    stored: list[int] = []

    def store(i: int, data: bytes) -> int:
        store_clip(root, i, data)
        stored.append(i)
        return i

    got = run_tasks(render_or_die, [(spec, i) for i in range(3)], desc="clips", progress=False, max_retries=2,
                    on_result=store)
    assert got == [0, 1, 2] and sorted(stored) == [0, 1, 2]
    assert sorted(p.name.split("-")[0] for p in marks.iterdir()) == ["0", "1", "1", "2"]  # clip 1 ran twice
    make_dataset(tmp_path / "local", spec, progress=False)
    assert _clips(root) == _clips(tmp_path / "local")  # only the three whole clips, no leftovers


def test_tasks_ask_for_a_gpu_only_for_a_cuda_device_on_a_cluster_with_gpus(ray_cluster):
    from sana_wm_env.distributed import run_tasks, scheduling_gpus

    assert scheduling_gpus("cuda") == scheduling_gpus("cuda:0") == scheduling_gpus(None) == 1
    assert scheduling_gpus("cpu") == 0

    def gpu_ids(i: int) -> list:
        return ray_cluster.get_gpu_ids()

    assert run_tasks(gpu_ids, [(0,), (1,)], desc="x", progress=False, num_gpus=1) == [[0], [0]]
    assert run_tasks(gpu_ids, [(0,)], desc="x", progress=False) == [[]]


def test_task_errors_surface_as_themselves(ray_cluster):
    from sana_wm_env.distributed import run_tasks

    def bad(index: int) -> None:  # defined here, so Ray ships it by value (the tests are not a package)
        raise ValueError(f"bad clip {index}")

    with pytest.raises(ValueError, match="bad clip 0"):
        run_tasks(bad, [(0,)], desc="x", progress=False)


# ------------------------------------------------------------------------------------------ sana-wm eval
TIMING_KEYS = {"timing", "seconds", "frames_per_second", "figures"}


def _without_timing(value):
    """``value`` (parsed results JSON) without wall-clock numbers, the figure paths and the output arguments."""
    if isinstance(value, dict):
        return {k: _without_timing(v) for k, v in value.items()
                if k not in TIMING_KEYS and not k.startswith("streaming_frames_per_second")}
    if isinstance(value, list):
        return [_without_timing(v) for v in value]
    return value


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    from world_model.bundles import save_world_model, untrained_world_model

    folder = tmp_path_factory.mktemp("bundle") / "tiny"
    save_world_model(untrained_world_model("tiny-notext", image_hw=(16, 16), seed=3), folder)
    return folder


def test_eval_on_ray_gives_the_local_json(ray_cluster, tiny_bundle, tmp_path, one_thread):
    import json

    args = ["eval", "--model", str(tiny_bundle), "--quick", "--frames", "9", "--revisit-episodes", "0",
            "--no-untrained", "--no-progress", "--threads", "1"]
    assert main([*args, "--json", str(tmp_path / "local.json")]) == 0
    assert main([*args, "--json", str(tmp_path / "ray" / "ray.json"), "--ray"]) == 0
    local, ray = (json.loads(p.read_text()) for p in (tmp_path / "local.json", tmp_path / "ray" / "ray.json"))
    assert ray["arguments"].pop("ray") == "auto" and local["arguments"].pop("ray") is None
    for res in (local, ray):
        del res["arguments"]["json"]
    assert set(local["candidates"]) == {"model", "repeat_first_frame", "warp"}
    assert local["candidates"]["model"]["stability"]["frames"] == 200 and len(local["episodes"]["main"]) == 3
    assert json.dumps(_without_timing(ray), sort_keys=True) == json.dumps(_without_timing(local), sort_keys=True)
    assert (tmp_path / "ray" / "ray_contact.png").stat().st_size > 0


# ------------------------------------------------------------------------------------------ sana-wm evaluate-policy
def test_evaluate_policy_on_ray_gives_the_local_json(ray_cluster, tiny_bundle, tmp_path, one_thread):
    import json

    # CEM plans with the world model's imagination on ImageNav (image goals): the actions depend on its frames
    args = ["evaluate-policy", "--task", "imagenav", "--policy", "cem", "--episodes", "2", "--model", str(tiny_bundle),
            "--max-steps", "2", "--planner-samples", "4", "--planner-horizon", "2", "--planner-iterations", "1",
            "--seed", "3", "--threads", "1", "--no-progress"]
    assert main([*args, "--json", str(tmp_path / "local.json")]) == 0
    assert main([*args, "--json", str(tmp_path / "ray.json"), "--ray"]) == 0
    local, ray = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("local", "ray"))
    for res in (local, ray):
        for world in res["worlds"].values():
            assert world.pop("seconds") > 0 and world.pop("steps_per_second") > 0
    assert [e["seed"] for e in local["worlds"]["world_model"]["episodes"]] == [3, 4]
    assert ray == local


# ------------------------------------------------------------------------------------------ sana-wm replay
def test_replay_on_ray_writes_each_flight_as_a_local_replay(ray_cluster, tiny_bundle, trajectory_data, tmp_path,
                                                            one_thread, capsys):
    import json

    # two flights (two segments of the EuRoC recording) and a file that is no trajectory
    flights = tmp_path / "flights"
    flights.mkdir()
    rows = (trajectory_data / "V102_groundtruth.csv").read_text().splitlines(keepends=True)
    (flights / "early.csv").write_text("".join(rows[:400]))
    (flights / "late.csv").write_text("".join(rows[:1] + rows[4000:4400]))
    (flights / "notes.txt").write_text("not a trajectory\n")
    example = Path(__file__).resolve().parents[1] / "examples" / "first_frame.png"
    opts = ["--image", str(example), "--duration", "0.5", "--model", str(tiny_bundle), "--threads", "1"]
    for name in ("early", "late"):
        local_out = tmp_path / "local" / f"{name}.mp4"
        assert main(["replay", str(flights / f"{name}.csv"), *opts, "--out", str(local_out)]) == 0
    assert main(["replay", str(flights), *opts, "--out", str(tmp_path / "ray"), "--ray"]) == 0
    summary = json.loads((tmp_path / "ray" / "replay_summary.json").read_text())
    assert summary["replayed"] == 2 and summary["failed"] == 0
    assert [Path(f["trajectory"]).name for f in summary["flights"]] == ["early.csv", "late.csv"]
    assert sorted(p.name for p in (tmp_path / "ray").iterdir()) == [
        "early.json", "early.mp4", "early.tum", "late.json", "late.mp4", "late.tum", "replay_summary.json"]
    for name, flight in zip(("early", "late"), summary["flights"]):
        for suffix in (".mp4", ".tum"):
            ray_bytes, local_bytes = ((tmp_path / d / f"{name}{suffix}").read_bytes() for d in ("ray", "local"))
            assert ray_bytes == local_bytes
        local, ray = (json.loads((tmp_path / d / f"{name}.json").read_text()) for d in ("local", "ray"))
        assert ray == flight["summary"] and ray["frames"] == 9
        for res in (local, ray):
            for key in ("out", "tum", "seconds", "frames_per_second"):
                del res[key]
        assert ray == local
    # one summary JSON also when a flight fails (exit code 1), the others still replayed
    (flights / "broken.csv").write_text(rows[0] + "1403715524907143168,0.5,nan,0.9,1,0,0,0\n")
    capsys.readouterr()
    assert main(["replay", str(flights / "*.csv"), *opts, "--out", str(tmp_path / "ray2"), "--ray"]) == 1
    summary = json.loads((tmp_path / "ray2" / "replay_summary.json").read_text())
    assert summary["replayed"] == 2 and summary["failed"] == 1 and "broken.csv: error" in capsys.readouterr().out
    # bad input: one line, exit code 2, before any task
    assert main(["replay", str(flights), *opts, "--out", str(tmp_path / "one.mp4"), "--ray"]) == 2
    assert main(["replay", str(tmp_path / "none" / "*.csv"), *opts, "--out", str(tmp_path / "ray3"), "--ray"]) == 2
    err = capsys.readouterr().err
    assert "--out: with --ray, a folder" in err and "no trajectory files" in err and err.count("\n") == 2


# ------------------------------------------------------------------------------------------ Ray-actor vector env
def _rollout(venv, actions, seed):
    obs, _ = venv.reset(seed=seed)
    out = [(obs, None, None, None)]
    for a in actions:
        obs, rew, term, trunc, _ = venv.step(a)
        out.append((obs, rew, term, trunc))
    return out


def test_ray_vector_env_matches_the_local_vector_env(ray_cluster, tiny_bundle, one_thread):
    import gymnasium as gym
    import numpy as np

    from sana_wm_env.envs.ray_vector import RayVectorEnv

    actions = np.random.default_rng(1).uniform(-1, 1, (3, 2, 6)).astype(np.float32)
    # the twin renders exactly: the same observations, rewards and ends as the local vector env, through an
    # autoreset (max_steps 2: the third step resets both sub-envs)
    kw = {"image_hw": (16, 16), "task_config": {"max_steps": 2}}
    remote = RayVectorEnv("SanaWM-TwinNav-v0", 2, **kw)
    assert remote.observation_space == gym.make_vec("SanaWM-TwinNav-v0", num_envs=2,
                                                    vectorization_mode="vector_entry_point", **kw).observation_space
    got = _rollout(remote, actions, seed=7)
    want = _rollout(gym.make_vec("SanaWM-TwinNav-v0", num_envs=2, vectorization_mode="vector_entry_point", **kw),
                    actions, seed=7)
    assert got[2][3].tolist() == [True, True] and got[3][1].tolist() == [0.0, 0.0]
    for g, w in zip(got, want):
        for key in w[0]:
            np.testing.assert_array_equal(g[0][key], w[0][key])
        for a, b in zip(g[1:], w[1:]):
            assert (a is None and b is None) or a.tolist() == b.tolist()
    remote.close()
    # the world model: sub-env i is the single env seeded 7 + i, frame for frame; the local vector env generates
    # its sub-envs in one batch, equal up to float reassociation (as tests/test_envs_vector.py checks)
    remote = RayVectorEnv("SanaWM-Nav-v0", 2, model=str(tiny_bundle))
    got = _rollout(remote, actions[:2], seed=7)
    remote.close()
    for i in range(2):
        single = gym.make("SanaWM-Nav-v0", model=str(tiny_bundle))
        obs, _ = single.reset(seed=7 + i)
        np.testing.assert_array_equal(got[0][0]["image"][i], obs["image"])
        for t, a in enumerate(actions[:2]):
            obs, *_ = single.step(a[i])
            np.testing.assert_array_equal(got[t + 1][0]["image"][i], obs["image"])
    local = _rollout(gym.make_vec("SanaWM-Nav-v0", num_envs=2, vectorization_mode="vector_entry_point",
                                  model=str(tiny_bundle)), actions[:2], seed=7)
    for g, w in zip(got, local):
        diff = np.abs(g[0]["image"].astype(int) - w[0]["image"].astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01
    # two sub-envs batched in each of two actors: each actor is the local vector env of two, seeded 7 and 9, exactly
    remote = RayVectorEnv("SanaWM-Nav-v0", 4, envs_per_actor=2, model=str(tiny_bundle))
    assert len(remote.actors) == 2
    acts4 = np.concatenate([actions[:2], actions[:2] * -0.5], axis=1)
    got = _rollout(remote, acts4, seed=7)
    remote.close()
    for j in range(2):
        local = _rollout(gym.make_vec("SanaWM-Nav-v0", num_envs=2, vectorization_mode="vector_entry_point",
                                      model=str(tiny_bundle)), acts4[:, 2 * j:2 * j + 2], seed=7 + 2 * j)
        for g, w in zip(got, local):
            for key in w[0]:
                np.testing.assert_array_equal(g[0][key][2 * j:2 * j + 2], w[0][key])
            assert g[1] is None or g[1][2 * j:2 * j + 2].tolist() == w[1].tolist()


def test_ray_vector_env_batches_sub_envs_per_actor_through_an_autoreset(ray_cluster):
    import gymnasium as gym
    import numpy as np

    from sana_wm_env.envs.ray_vector import RayVectorEnv

    kw = {"image_hw": (16, 16), "task_config": {"max_steps": 2}}
    actions = np.random.default_rng(2).uniform(-1, 1, (3, 4, 6)).astype(np.float32)
    remote = RayVectorEnv("SanaWM-TwinNav-v0", 4, envs_per_actor=2, **kw)
    got = _rollout(remote, actions, seed=3)
    infos = remote.step(actions[0])[-1]
    assert len(remote.render()) == 4
    remote.close()
    want = _rollout(gym.make_vec("SanaWM-TwinNav-v0", num_envs=4, vectorization_mode="vector_entry_point", **kw),
                    actions, seed=3)
    assert got[2][3].tolist() == [True] * 4 and got[3][1].tolist() == [0.0] * 4
    for g, w in zip(got, want):
        for key in w[0]:
            np.testing.assert_array_equal(g[0][key], w[0][key])
        for a, b in zip(g[1:], w[1:]):
            assert (a is None and b is None) or a.tolist() == b.tolist()
    assert all(len(v) == 4 for k, v in infos.items() if not isinstance(v, dict))
    with pytest.raises(ValueError, match="multiple of envs_per_actor"):
        RayVectorEnv("SanaWM-TwinNav-v0", 3, envs_per_actor=2, **kw)
    with pytest.raises(ValueError, match="envs_per_actor must be a positive int"):
        RayVectorEnv("SanaWM-TwinNav-v0", 2, envs_per_actor=0, **kw)
