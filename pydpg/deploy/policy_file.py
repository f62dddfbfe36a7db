"""The policy file's format: its name and version, where its metadata lives, how the metadata is
written (strict JSON) and read back (from the zip, without unpickling), and loading a TorchScript
file without torch's deprecation noise. Shared by export (which writes files) and by what reads
them (pydpg.deploy.rounding, the runtime facade, the CLI)."""

from __future__ import annotations

import contextlib
import json
import os
import warnings
import zipfile
from typing import Optional, Union

FORMAT = "pydpg-policy"
FORMAT_VERSION = (
    1  # bump on any change a deployed runtime could misread; include/pydpg/policy_runtime.hpp kFormatVersion
)
METADATA_FILE = "pydpg_policy.json"
MODEL_FILE = "model.xml"


def metadata_json(meta: dict, indent: Optional[int] = None) -> str:
    """The metadata as strict JSON (the C++ reader refuses Python's NaN/Infinity words)."""
    try:
        return json.dumps(meta, indent=indent, allow_nan=False)
    except ValueError as e:
        raise ValueError(f"the policy metadata holds a non-finite number, which JSON cannot carry: {e}") from None


def read_metadata(path: Union[str, os.PathLike]) -> dict:
    """The metadata of a TorchScript policy file, read from its zip without loading or unpickling."""
    with zipfile.ZipFile(path) as z:
        names = [n for n in z.namelist() if n.endswith(f"/extra/{METADATA_FILE}")]
        if not names:
            raise ValueError(f"{os.fspath(path)!r} is not a pydpg policy: no {METADATA_FILE} in it")
        return json.loads(z.read(names[0]))


@contextlib.contextmanager
def quiet_torchscript():
    # torch >= 2.10 marks TorchScript deprecated and warns on every torch.jit.script/save. libtorch's
    # torch::jit::load is still the supported way to run a model from C++ without Python, which is
    # the point of this file format, so we choose it knowingly and keep the warning out of users'
    # logs. Only the warnings raised inside our own calls are filtered.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*(TorchScript|torch\.jit).*")
        warnings.filterwarnings("ignore", category=UserWarning, message=r".*(TorchScript|torch\.jit).*")
        yield


def load_torchscript(path: Union[str, os.PathLike]):
    """The file's TorchScript module, on the CPU."""
    import torch

    with quiet_torchscript():
        return torch.jit.load(os.fspath(path), map_location="cpu")
