"""The GPU preflight: does the framework in an env image see the GPUs it is given?"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from runner.plugins._docker.containers import gpu_args
from runner.plugins._docker.engine import DockerCLI
from runner.plugins._docker.names import L_KIND, L_MANAGED

# -- GPU preflight ----------------------------------------------------------------------------------
#: Runs inside the env image with the run's --gpus; prints one JSON object.
PREFLIGHT = r"""
import glob, importlib.util, json, shutil, subprocess
out = {"devices": sorted(glob.glob("/dev/nvidia[0-9]*")), "smi": None, "libcuda": False,
       "framework": None}
try:
    import ctypes
    ctypes.CDLL("libcuda.so.1")
    out["libcuda"] = True
except OSError:
    pass
if shutil.which("nvidia-smi"):
    p = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    out["smi"] = (p.stdout or p.stderr).strip()
if importlib.util.find_spec("tensorflow"):
    import os
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    out["framework"] = {"name": "tensorflow", "version": tf.__version__,
                        "cuda_build": bool(tf.test.is_built_with_cuda()),
                        "gpus": len(tf.config.list_physical_devices("GPU"))}
elif importlib.util.find_spec("torch"):
    import torch
    out["framework"] = {"name": "torch", "version": torch.__version__,
                        "cuda_build": torch.version.cuda is not None,
                        "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0}
elif importlib.util.find_spec("jax"):
    import jax
    gpus = [d for d in jax.devices() if d.platform == "gpu"]
    out["framework"] = {"name": "jax", "version": jax.__version__, "cuda_build": bool(gpus),
                        "gpus": len(gpus)}
print(json.dumps(out))
"""


@dataclass(frozen=True)
class Preflight:
    """What a GPU container saw, layer by layer."""

    ok: bool
    layers: list[tuple[str, bool, str]]  # (layer, ok, what was seen)
    missing: str | None  # the first layer that failed
    seen: Mapping[str, Any]

    def render(self) -> str:
        return "\n".join(f"{'ok     ' if ok else 'MISSING'} {name}: {what}"
                         for name, ok, what in self.layers)


def gpu_preflight(cli: DockerCLI, image: str, gpus: str, *, timeout: float = 180) -> Preflight:
    """Check inside ``image``, with ``--gpus gpus``, that the framework sees a GPU."""
    argv = ["run", "--rm", "--network", "none", "--label", f"{L_MANAGED}=1",
            "--label", f"{L_KIND}=preflight", *gpu_args(gpus), image, "python", "-c", PREFLIGHT]
    r = cli(*argv, timeout=timeout)
    layers: list[tuple[str, bool, str]] = []
    if not r.ok and ("could not select device driver" in r.stderr or "nvidia" in r.stderr.lower()
                     and not r.stdout.strip()):
        layers.append(("container toolkit", False,
                       f"the engine on {cli.where} refused --gpus ({r.last_error()}): the NVIDIA "
                       "container toolkit is not installed or dockerd was not restarted after it"))
        return Preflight(False, layers, "container toolkit", {})
    try:
        seen = json.loads(r.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        raise RuntimeError(f"GPU preflight in {image} failed to run: {r.last_error()}") from None
    layers.append(("container toolkit", True, "the engine accepted --gpus"))
    has_driver = bool(seen["devices"]) and bool(seen["libcuda"])
    driver_what = (f"{len(seen['devices'])} device(s), libcuda present" if has_driver else
                   f"devices: {', '.join(seen['devices']) or 'none'}; libcuda.so.1: "
                   f"{'found' if seen['libcuda'] else 'not found'} -- the host has no NVIDIA driver, "
                   "or the container toolkit did not pass it into the container")
    layers.append(("host driver", has_driver, driver_what))
    fw = seen.get("framework")
    if fw is None:
        layers.append(("framework", True, "no tensorflow/torch/jax in the image; only the driver "
                                          "was checked"))
    elif not fw["cuda_build"]:
        layers.append(("framework", False, f"{fw['name']} {fw['version']} is a CPU-only build: "
                       "install its CUDA build (e.g. tensorflow[and-cuda] instead of tensorflow-cpu)"))
    else:
        layers.append(("framework", fw["gpus"] > 0, f"{fw['name']} {fw['version']} (CUDA build) "
                       f"sees {fw['gpus']} GPU(s)"))
    missing = next((name for name, ok, _ in layers if not ok), None)
    return Preflight(missing is None, layers, missing, seen)
