"""Starting or joining Ray: the one place pydpg does it (distributed collection, sweeps).

Ray is an optional extra (``pip install 'pydpg[ray]'``); without it the features that need it fail
with a message naming the extra.

Security. Ray has no authentication of its own: its docs require a cluster to sit on a trusted
network, and exposed dashboards and job APIs were the way in for the 2023 "ShadowRay" attacks. So
the local default (no address) starts no dashboard UI (Ray still runs its minimal dashboard
process, for its own agents) and keeps every Ray server, that one included, on the loopback
interface. Ray binds its gRPC servers to the node's IP, which it resolves to the loopback only in
its local-only mode (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, the mode it uses on macOS and
Windows); that mode is set before Ray is imported, and tests/test_distributed.py checks that a local
run listens on no other address. With ``address`` pydpg joins an existing cluster as it is
configured: that cluster must be on a trusted network.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any, Optional

EXTRA = "pip install 'pydpg[ray]'"
_LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def require_ray(feature: str) -> Any:
    """The ``ray`` module, or an ImportError naming ``feature`` and the extra that provides it."""
    try:
        import ray
    except ImportError:
        raise ImportError(f"{feature} needs Ray, an optional extra of pydpg: {EXTRA}") from None
    return ray


def _check_reachable(address: str, timeout: float) -> None:
    """Fail within ``timeout`` for an address no GCS answers at: ray.init itself retries for minutes."""
    if address == "auto":
        return
    client = address.startswith("ray://")  # Ray Client: a gRPC server of its own (default port 10001)
    target = address[len("ray://") :] if client else address
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(
            f"--ray-address must be HOST:PORT (the head node's GCS address), 'auto' or ray://HOST:PORT, got {address!r}"
        )
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise ConnectionError(f"no Ray cluster answers at {address} within {timeout:g} s ({e})") from None
    if client:
        _check_grpc(target, address, timeout)
    else:
        _check_gcs(address, timeout)


def _check_grpc(target: str, address: str, timeout: float) -> None:
    """A Ray Client address must at least speak gRPC (HTTP/2): anything else is refused within
    ``timeout`` rather than after Ray Client's own half a minute of retries."""
    try:
        import grpc
    except ImportError:
        return
    with grpc.insecure_channel(target) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise ConnectionError(
                f"{address} answers, but not as a Ray Client server (no gRPC within {timeout:g} s); "
                "ray:// addresses are the head's Ray Client port (default 10001)"
            ) from None


def _check_gcs(address: str, timeout: float) -> None:
    """Ask ``address`` for its cluster id, as a Ray client's first call to the GCS does: a server
    that is not a Ray head's GCS (ray.init would retry "Failed to connect to GCS" forever, deaf to
    Ctrl-C) or one that wants a token this process does not send (ray.init fails after half a
    minute of InvalidAuthToken) is refused within ``timeout`` with a message saying which."""
    try:
        import grpc
        from ray._private.authentication.grpc_authentication_client_interceptor import (
            _get_authentication_metadata_tuple,
        )
        from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc
    except ImportError:  # another Ray than the one this check was written against: ray.init's own checks
        return
    with grpc.insecure_channel(address) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        try:
            stub.GetClusterId(
                gcs_service_pb2.GetClusterIdRequest(), timeout=timeout, metadata=_get_authentication_metadata_tuple()
            )
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.UNAUTHENTICATED:
                raise ConnectionError(
                    f"the Ray cluster at {address} requires token authentication (Ray >= 2.60 turns it on by default): "
                    "set RAY_AUTH_MODE=token in this shell, with the head's token in ~/.ray/auth_token (what `ray "
                    "start --head` wrote there) or in RAY_AUTH_TOKEN; docs/distributed.md"
                ) from None
            raise ConnectionError(
                f"{address} answers, but not as a Ray head's GCS ({e.code().name}: "
                f"{(e.details() or '')[:200]}); --ray-address is the head's --port (default 6379)"
            ) from None


def check_no_shadow(cwd: Optional[str] = None) -> None:
    """Refuse a current directory whose ``pydpg/`` is not the pydpg this process imported: Ray puts
    the driver's directory first on its workers' path, so they would import that tree instead (a
    source checkout beside a non-editable install: no compiled core there, every trial fails)."""
    here = os.path.realpath(os.path.join(cwd or os.getcwd(), "pydpg"))
    mine = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))  # this file is pydpg/train/
    if os.path.isfile(os.path.join(here, "__init__.py")) and here != mine:
        raise RuntimeError(
            f"the current directory holds another pydpg ({here}) than the one running ({mine}); Ray's "
            "workers would import it. Run from another directory, or install that tree (pip install -e .)"
        )


def init(address: Optional[str] = None, num_cpus: Optional[int] = None, timeout: float = 10.0) -> Any:
    """Ray, initialized: joins ``address`` if given, else starts a local, loopback-only Ray with
    ``num_cpus`` CPUs and no dashboard. A session that is already up is reused (tests share one)."""
    # A local Ray, or joining one on this machine's loopback (a second process of a local run),
    # runs in Ray's local-only mode.
    local = address is None or address.rpartition(":")[0].strip("[]") in ("127.0.0.1", "localhost", "::1")
    if local:
        os.environ.setdefault(_LOCAL_ONLY_ENV, "0")
    ray = require_ray("distributed training and sweeps")
    if ray.is_initialized():
        return ray
    check_no_shadow()
    if local and os.environ.get(_LOCAL_ONLY_ENV) == "0":
        # Ray reads the switch when it is first imported; if something imported it earlier (a
        # user's script, Ray Tune), set what it was read into, or the servers bind to all interfaces.
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False
    if address is None:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    else:
        _check_reachable(address, timeout)
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    return ray


def shutdown() -> None:
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
