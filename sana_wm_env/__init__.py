"""SANA-WM environments: envs, tasks, twin worlds, trajectory I/O, datasets and the `sana-wm` CLI."""
