"""The observation and termination contract a policy file carries (``observation``): specs, their
evaluation by the C++ core against a MuJoCo model, and their verification against an env. Training
checks a run's spec at start; export verifies and ships it.
"""
