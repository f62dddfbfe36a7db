"""What both journeys share and nothing of pydpg's own: Gymnasium envs (making, checking, evaluating,
their simulator state) and error messages that suggest a name. Imports nothing else of pydpg.
"""
