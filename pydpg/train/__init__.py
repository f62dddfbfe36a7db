"""The training run: the loop (``trainer``), its settings and their layers (``config``), collectors
(``collect``: this process's envs; ``distributed``: Ray actors), the Ray session, run state, the run
log and plots.
"""
