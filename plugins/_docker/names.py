"""Names the runner gives things in a Docker engine: labels, image repository, mount points."""

from __future__ import annotations

#: Label keys on everything the runner creates in an engine.
LABEL = "io.runner"
#: network modes a Docker target may ask for (no bridge is assumed to exist besides the default)
NETWORKS = ("default", "host", "none")
L_MANAGED = f"{LABEL}.managed"  # "1" on every container and image the runner made
L_KIND = f"{LABEL}.kind"  # "run", "preflight" or "env" (an env image)
L_RUN_ID = f"{LABEL}.run-id"
L_TARGET = f"{LABEL}.target"
L_PROJECT = f"{LABEL}.project"  # the client's project root (ledgers are per project)
L_RUN_DIR = f"{LABEL}.run-dir"
L_ENV_KEY = f"{LABEL}.env-key"
L_ENV_NAME = f"{LABEL}.env-name"
L_ENV_INPUTS = f"{LABEL}.env-inputs"  # JSON of the inputs, to explain a later miss

#: Repository of env images; the tag is the env's content key.
IMAGE_REPO = "runner-env"
#: Bumped when the image recipe below changes in a way the inputs do not show.
RECIPE = 2
#: Where things live inside a run container.
RUN_MOUNT = "/runner/run"
DATA_MOUNT = "/runner/data"  # the run's shipped data inputs, one folder per data key, read-only
CACHE_MOUNT = "/runner/cache"  # the target's cache volume: framework downloads, pip
BUNDLE_DIR = "/opt/runner/bundle"
VENV_DIR = "/opt/runner/venv"
