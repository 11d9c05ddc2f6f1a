"""Policy evaluation in a world-model env and in its MuJoCo twin: success rate, SPL, return, and the gap.

Both worlds run the same episodes: episode ``i`` resets both envs with seed ``seed + i`` (same scene, start and
goal; rewards and success depend only on poses, see ``sana_wm_env.envs.tasks``) and re-seeds the policy with
the same seed, so any difference comes from the frames the policy sees (and, through them, its actions). A
policy that ignores the frames (random, the pose controller on Nav) scores identically in both worlds.

Metrics per world, over the episodes:

* ``success_rate``: share of episodes that ended with ``info["is_success"]``.
* ``spl``: success weighted by path length (Anderson et al. 2018, "On evaluation of embodied navigation
  agents"): ``mean_i S_i * l_i / max(p_i, l_i)`` with ``l_i`` the straight-line start-to-goal distance of
  the body (m) and ``p_i`` the metres the body travelled (summed over every frame of every step, so arcs count).
* ``mean_return``: mean undiscounted episode return; also mean steps, path length and collision rate.

The gap is ``world_model - twin`` for success rate, SPL and mean return.

A policy is any object with ``act(obs, env) -> action (6,)`` and optionally ``reset(env, seed)``, ``name``
and ``privileged`` (True for oracles reading the env's hidden state); ``evaluate_policy`` also accepts a
callable ``env -> policy``. This module does not import ``policies`` (a higher layer): callers build them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

WORLDS: tuple[str, ...] = ("world_model", "twin")
ENV_TASKS: dict[str, str] = {"nav": "Nav", "imagenav": "ImageNav"}
GAP_KEYS: tuple[str, ...] = ("success_rate", "spl", "mean_return")


@dataclass
class EpisodeResult:
    """One evaluated episode."""

    seed: int
    success: bool
    episode_return: float
    steps: int
    path_length: float  # metres the body travelled
    shortest: float  # straight-line start-to-goal distance (m)
    collision: bool
    final_distance: float | None = None  # metres from the goal at the end


def spl_terms(successes: Sequence[bool], shortest: Sequence[float], paths: Sequence[float]) -> np.ndarray:
    """Per-episode SPL terms ``S_i * l_i / max(p_i, l_i)`` (0 for failures)."""
    s = np.asarray(successes, dtype=bool)
    l_ = np.asarray(shortest, dtype=np.float64)
    p = np.asarray(paths, dtype=np.float64)
    if not (s.shape == l_.shape == p.shape) or s.ndim != 1:
        raise ValueError(f"successes, shortest and paths must be 1-D of one length, got {s.shape}, {l_.shape}, "
                         f"{p.shape}")
    if not (np.isfinite(l_).all() and np.isfinite(p).all()) or (l_ < 0).any() or (p < 0).any():
        raise ValueError("shortest and paths must be finite distances >= 0")
    if (s & (l_ <= 0)).any():
        raise ValueError("a successful episode needs a shortest distance > 0 (start and goal coincide)")
    out = np.zeros(len(s))
    out[s] = l_[s] / np.maximum(p[s], l_[s])
    return out


def spl(successes: Sequence[bool], shortest: Sequence[float], paths: Sequence[float]) -> float:
    """Success weighted by (normalised inverse) path length, in [0, 1]; see the module docstring."""
    terms = spl_terms(successes, shortest, paths)
    if len(terms) == 0:
        raise ValueError("spl needs at least one episode")
    return float(terms.mean())


def _body_positions(frames_c2w: np.ndarray, inv_mount: np.ndarray) -> np.ndarray:
    return (np.asarray(frames_c2w) @ inv_mount)[:, :3, 3]


def run_episode(env, policy, seed: int, options: dict | None = None) -> EpisodeResult:
    """Run ``policy`` for one episode of ``env`` reset with ``seed`` (until terminated or truncated)."""
    sim = env.unwrapped.sim
    obs, info = env.reset(seed=int(seed), options=options)
    if hasattr(policy, "reset"):
        policy.reset(env, int(seed))
    inv_mount = np.linalg.inv(sim.mount)
    episode = sim.subs[0].episode
    if episode.goal_body is None:
        raise ValueError(f"task {sim.task.name!r} has no goal pose; policy evaluation needs a goal (nav, imagenav)")
    shortest = float(np.linalg.norm(episode.goal_body[:3, 3] - episode.start_body[:3, 3]))
    last = (info["c2w"] @ inv_mount)[:3, 3]
    total, path, steps = 0.0, 0.0, 0
    while True:
        obs, reward, terminated, truncated, info = env.step(policy.act(obs, env))
        pos = _body_positions(info["frames_c2w"], inv_mount)
        path += float(np.linalg.norm(np.diff(np.vstack([last[None], pos]), axis=0), axis=1).sum())
        last = pos[-1]
        total += float(reward)
        steps += 1
        if terminated or truncated:
            break
    return EpisodeResult(seed=int(seed), success=bool(info.get("is_success", False)), episode_return=total,
                         steps=steps, path_length=path, shortest=shortest, collision=bool(info.get("collision")),
                         final_distance=info.get("distance"))


def summarize(results: Sequence[EpisodeResult]) -> dict[str, float]:
    """Aggregate metrics of a world's episodes (see the module docstring)."""
    if not results:
        raise ValueError("summarize needs at least one episode")
    returns = np.array([r.episode_return for r in results])
    return {
        "success_rate": float(np.mean([r.success for r in results])),
        "spl": spl([r.success for r in results], [r.shortest for r in results], [r.path_length for r in results]),
        "mean_return": float(returns.mean()),
        "std_return": float(returns.std()),
        "mean_steps": float(np.mean([r.steps for r in results])),
        "mean_path_length": float(np.mean([r.path_length for r in results])),
        "mean_shortest": float(np.mean([r.shortest for r in results])),
        "collision_rate": float(np.mean([r.collision for r in results])),
    }


def make_eval_envs(task: str, model=None, *, twin_only: bool = False, device: str = "cpu",
                   max_steps: int | None = None, split: str = "eval", **env_kwargs: Any) -> dict[str, Any]:
    """``{"world_model": env, "twin": env}`` (only the twin with ``twin_only``) for ``task`` ("nav"/"imagenav").

    Scenes come from the held-out ``"eval"`` split by default (the world models train on the ``"train"`` split).

    ``model`` (a ``WorldModel``, bundle name or path) is loaded once and shared; the twin copies its geometry.
    Without a model (``twin_only`` only) the twin uses its default geometry or ``env_kwargs`` (``image_hw``...).
    """
    import gymnasium as gym

    import sana_wm_env  # noqa: F401  (registers the ids)
    from sana_wm_env.envs.core import resolve_model

    if task not in ENV_TASKS:
        raise ValueError(f"task must be one of {', '.join(ENV_TASKS)}; got {task!r}")
    if model is None and not twin_only:
        raise ValueError("model is required unless twin_only=True (the world-model env needs a world model)")
    task_config = dict(env_kwargs.pop("task_config", None) or {})
    if max_steps is not None:
        task_config["max_steps"] = max_steps
    wm = resolve_model(model, device) if model is not None else None
    envs: dict[str, Any] = {}
    if not twin_only:
        envs["world_model"] = gym.make(f"SanaWM-{ENV_TASKS[task]}-v0", model=wm, device=device,
                                       split=split, task_config=task_config, **env_kwargs)
    envs["twin"] = gym.make(f"SanaWM-Twin{ENV_TASKS[task]}-v0", model=wm, split=split, task_config=task_config,
                             **env_kwargs)
    return envs


def evaluate_policy(
    policy, envs: dict[str, Any], *, episodes: int = 10, seed: int = 0, progress: bool = True,
    on_episode: Callable[[str, EpisodeResult], None] | None = None, ray: str | None = None,
    make_envs: Callable[[], dict[str, Any]] | None = None, threads: int = 1, device: str = "cpu",
) -> dict[str, Any]:
    """Run ``policy`` for ``episodes`` episodes (seeds ``seed .. seed + episodes - 1``) in each env of ``envs``.

    ``envs`` maps world names ("world_model", "twin") to envs (see :func:`make_eval_envs`); ``policy`` is a
    policy or a callable ``env -> policy`` (called once per world). Returns a JSON-ready dict: per world the
    summary (``summarize``), seconds and the episodes; and ``gap`` (world_model - twin) when both ran.

    With ``ray`` (an address, see :mod:`sana_wm_env.distributed`) every episode of every world is a Ray task:
    ``make_envs()`` (picklable, e.g. a ``functools.partial`` of :func:`make_eval_envs`) builds the same envs in
    the task's process, ``policy`` must be picklable, torch runs on ``threads`` threads and tasks ask for a GPU
    when ``device`` is a CUDA device and the cluster has GPUs. Every episode re-seeds the env and the policy, so
    the results are those of a local run on as many threads; ``seconds`` is then the episodes' own time, summed.
    """
    from tqdm.auto import tqdm

    if not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes must be an int >= 1, got {episodes!r}")
    if not envs or any(w not in WORLDS for w in envs):
        raise ValueError(f"envs must map a non-empty subset of {WORLDS} to envs, got {list(envs)}")
    if ray is not None and make_envs is None:
        raise ValueError("evaluate_policy with ray needs make_envs (the envs are built in each task)")
    seeds = [seed + i for i in range(episodes)]
    runs: dict[str, tuple[dict[str, Any], list[tuple[EpisodeResult, float]]]] = {}
    if ray is not None:
        from sana_wm_env.distributed import connect, run_tasks, scheduling_gpus

        jobs = [(make_envs, world, policy, s) for world in envs for s in seeds]
        with connect(ray):
            done = run_tasks(_episode_task, jobs, desc="policy episodes", progress=progress, threads=threads,
                             num_gpus=scheduling_gpus(device), unit="episode")
        for world in envs:
            mine = [d for job, d in zip(jobs, done) if job[1] == world]
            runs[world] = (mine[0][0], [d[1:] for d in mine])
            for _, r, _ in mine if on_episode is not None else ():
                on_episode(world, r)
    else:
        for world, env in envs.items():
            pol = policy if hasattr(policy, "act") else policy(env)
            runs[world] = (_policy_meta(pol), [])
            for s in tqdm(seeds, desc=f"{runs[world][0]['policy']} in {world}", disable=not progress, leave=False):
                t0 = time.perf_counter()
                r = run_episode(env, pol, s)
                runs[world][1].append((r, time.perf_counter() - t0))
                if on_episode is not None:
                    on_episode(world, r)
    worlds: dict[str, Any] = {}
    for world, (_, timed) in runs.items():
        results = [r for r, _ in timed]
        seconds = sum(dt for _, dt in timed)
        steps = sum(r.steps for r in results)
        worlds[world] = {**summarize(results), "seconds": seconds, "steps_per_second": steps / max(seconds, 1e-9),
                         "episodes": [asdict(r) for r in results]}
    meta = list(runs.values())[-1][0]  # the policy's name (that of the last world's, as they agree)
    sim = next(iter(envs.values())).unwrapped.sim
    out = {"task": sim.task.name, **meta, "episodes": episodes, "seed": seed, "split": sim.split,
           "max_steps": sim.task.config.max_steps, "image_hw": list(sim.image_hw), "worlds": worlds, "gap": None}
    if "world_model" in envs and envs["world_model"].unwrapped.sim.model is not None:
        out["model"] = envs["world_model"].unwrapped.sim.model.name
    if all(w in worlds for w in WORLDS):
        out["gap"] = {k: worlds["world_model"][k] - worlds["twin"][k] for k in GAP_KEYS}
    return out


def _policy_meta(policy) -> dict[str, Any]:
    return {"policy": getattr(policy, "name", type(policy).__name__),
            "privileged": bool(getattr(policy, "privileged", False))}


_TASK_ENVS: dict[bytes, dict[str, Any]] = {}  # one set per Ray worker process, built on its first task


def _episode_task(make_envs: Callable[[], dict[str, Any]], world: str, policy, seed: int
                  ) -> tuple[dict[str, Any], EpisodeResult, float]:
    """A Ray task: one episode in ``world`` of the worker's envs (built once per process) with a fresh policy."""
    from ray import cloudpickle  # runs on Ray workers only

    key = cloudpickle.dumps(make_envs)
    if key not in _TASK_ENVS:
        for old in _TASK_ENVS.values():
            for env in old.values():
                env.close()
        _TASK_ENVS.clear()
        _TASK_ENVS[key] = make_envs()
    env = _TASK_ENVS[key][world]
    pol = policy if hasattr(policy, "act") else policy(env)
    t0 = time.perf_counter()
    result = run_episode(env, pol, seed)
    return _policy_meta(pol), result, time.perf_counter() - t0


def format_table(results: dict[str, Any]) -> str:
    """A plain-text table of ``evaluate_policy``'s results: one row per world, plus the gap."""
    head = f"{'world':<12}{'success':>9}{'SPL':>8}{'return':>9}{'steps':>8}{'path m':>8}{'collide':>9}"
    title = f"{results['task']} / {results['policy']}{' (privileged)' if results.get('privileged') else ''}, " \
            f"{results['episodes']} episodes from seed {results['seed']}"
    lines = [title, head]
    for world, r in results["worlds"].items():
        lines.append(f"{world:<12}{r['success_rate']:>9.2f}{r['spl']:>8.3f}{r['mean_return']:>9.3f}"
                     f"{r['mean_steps']:>8.1f}{r['mean_path_length']:>8.2f}{r['collision_rate']:>9.2f}")
    if results.get("gap"):
        g = results["gap"]
        lines.append(f"{'gap (wm-tw)':<12}{g['success_rate']:>+9.2f}{g['spl']:>+8.3f}{g['mean_return']:>+9.3f}")
    return "\n".join(lines)


def write_results(results: dict[str, Any], path: str | Path) -> Path:
    """Write ``results`` as indented JSON (creating parent folders; the old file stays until the new one is whole)."""
    import json

    from sana_wm_env.outputs import write_text_atomic

    return write_text_atomic(path, json.dumps(results, indent=2) + "\n")
