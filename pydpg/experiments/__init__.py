"""Many runs: sweeps (``sweep``), their TOML specs (``sweep_spec``) and summaries (``sweep_summary``),
and the Stable-Baselines3 peer (``sb3_peer``).
"""
