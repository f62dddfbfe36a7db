"""The one error policy of every ``pydpg`` subcommand: a one-line message naming what was wrong,
``pydpg COMMAND: error: ...`` on stderr, no traceback, and an exit status that says whose it was.

- 2, usage: what the user gave is wrong (a flag, a value, a config key, a file that is missing or is
  not what it should be, an argument of the wrong type);
- 1, failure: the work itself failed (a parity check, the control loop, Ray workers, a missing
  optional extra).
"""

from __future__ import annotations

import sys
from typing import Callable

EXIT_USAGE = 2
EXIT_FAILURE = 1


class CLIError(Exception):
    """A user error found by the command line itself: exit status 2."""


def guarded(command: str, work: Callable[[], int]) -> int:
    """``work()``'s exit status, or the policy's for what it raised."""

    def say(message: str) -> None:
        print(f"pydpg {command}: error: {message}", file=sys.stderr)

    try:
        return work()
    except (CLIError, ValueError, OSError) as e:
        # ValueError covers bad config values, unknown env ids, discrete action spaces and bad
        # checkpoints (CheckpointError); OSError missing files (e.g. an xml_file): each message
        # already names what is wrong.
        say(str(e))
        return EXIT_USAGE
    except TypeError as e:
        # gym.make(env_id, **env_kwargs) with a keyword the env does not take, or an argument of the
        # wrong type
        hint = " (check --env-kwarg / the [env] table)" if "unexpected keyword argument" in str(e) else ""
        say(f"{e}{hint}")
        return EXIT_USAGE
    except (ImportError, RuntimeError) as e:
        # A missing optional extra (the message names it), a failed parity check, the control loop's
        # or the Ray workers' failure (their messages name what failed).
        say(str(e))
        return EXIT_FAILURE
