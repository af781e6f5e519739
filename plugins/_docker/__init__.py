"""What every Docker backend shares, one concern a module: ``names`` (labels, mount points),
``engine`` (running docker commands here or over SSH), ``containers`` (run containers),
``images`` (env images keyed by content), ``preflight`` (does the framework see the GPU),
``housekeeping`` (orphans, pruning) and ``target`` (the Docker target config and the run
container, status and GPU rules both Docker backends apply).

Everything here produces argument lists for the ``docker`` command line and runs them through
an :class:`Executor`, so the same code drives an engine on this machine (``subprocess``) or on
a remote host (one SSH command per call). The docker CLI is used rather than a client library:
it behaves the same locally and over SSH, and a failed start leaves nothing half-made that a
library would have to clean up.
"""

from __future__ import annotations

from runner.plugins._docker.containers import (  # noqa: F401
    ContainerSpec,
    cache_env,
    check_target,
    data_mounts,
    gpu_args,
    mount_arg,
    start_error,
    valid_volume_name,
    visible_devices,
    worker_command,
)
from runner.plugins._docker.engine import (  # noqa: F401
    DockerCLI,
    Executor,
    LocalExecutor,
    Result,
    user_arg,
)
from runner.plugins._docker.housekeeping import (  # noqa: F401
    STAGING_PATIENCE,
    Container,
    StoredEnvImage,
    created_epoch,
    env_images,
    find_orphans,
    our_containers,
    prune_report,
    remove_env_images,
    unused_env_images,
)
from runner.plugins._docker.images import (  # noqa: F401
    EnvImage,
    build_context,
    dockerfile,
    ensure_env_image,
    image_tag,
    missing_base_error,
)
from runner.plugins._docker.names import (  # noqa: F401
    BUNDLE_DIR,
    CACHE_MOUNT,
    DATA_MOUNT,
    IMAGE_REPO,
    L_ENV_INPUTS,
    L_ENV_KEY,
    L_ENV_NAME,
    L_KIND,
    L_MANAGED,
    L_PROJECT,
    L_RUN_DIR,
    L_RUN_ID,
    L_TARGET,
    LABEL,
    NETWORKS,
    RECIPE,
    RUN_MOUNT,
    VENV_DIR,
)
from runner.plugins._docker.preflight import (  # noqa: F401
    PREFLIGHT,
    Preflight,
    gpu_preflight,
)
from runner.plugins._docker.target import (  # noqa: F401
    LIVE,
    DockerTargetConfig,
    check_gpus,
    ended_status,
    run_container,
    run_gpus,
    running_status,
)
from runner.units import age_text, size_text  # noqa: F401
