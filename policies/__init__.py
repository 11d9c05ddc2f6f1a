"""Policies and training glue for the SANA-WM envs (may import sana_wm_env; never imported by it)."""
