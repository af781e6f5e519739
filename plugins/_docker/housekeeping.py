"""Finding what the runner left in an engine: its containers (orphans) and env images
nothing uses any more (``docker-prune``)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from runner.errors import UserError
from runner.plugins._docker.engine import DockerCLI
from runner.plugins._docker.names import (
    IMAGE_REPO,
    L_ENV_NAME,
    L_KIND,
    L_MANAGED,
    L_PROJECT,
    L_RUN_DIR,
    L_RUN_ID,
)
from runner.units import age_text, size_text


# -- containers we made -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Container:
    """A container carrying the runner's labels."""

    id: str  # full container id
    name: str
    run_id: str  # the run it belongs to ("" for preflight/check containers)
    kind: str  # run, preflight, check
    state: str  # docker's: created, running, exited, dead, ...
    project: str  # the project root of the client that started it
    run_dir: str
    created: str  # docker's creation time (RFC 3339)

    @classmethod
    def from_inspect(cls, data: Mapping[str, Any]) -> Container:
        labels = (data.get("Config") or {}).get("Labels") or {}
        return cls(
            id=str(data.get("Id", "")), name=str(data.get("Name", "")).lstrip("/"),
            run_id=labels.get(L_RUN_ID, ""), kind=labels.get(L_KIND, ""),
            state=str((data.get("State") or {}).get("Status", "")),
            project=labels.get(L_PROJECT, ""), run_dir=labels.get(L_RUN_DIR, ""),
            created=str(data.get("Created", "")),
        )


def our_containers(cli: DockerCLI, project: str | None = None) -> list[Container]:
    """Every container the runner started on this engine (of one project, if given)."""
    labels = {L_MANAGED: "1"}
    if project:
        labels[L_PROJECT] = project
    return [Container.from_inspect(d) for d in cli.labelled(labels)]


def find_orphans(cli: DockerCLI, known_run_ids: Iterable[str], project: str | None = None
                 ) -> list[Container]:
    """Our containers that no in-flight run accounts for: leftovers of ended runs, of failed
    starts ("created"), of preflights, or of runs a ledger no longer knows."""
    known = set(known_run_ids)
    # kind "env" is inherited from an env image by containers someone started by hand
    return [c for c in our_containers(cli, project)
            if c.kind != "env" and not (c.kind == "run" and c.run_id in known)]




# -- pruning env images -----------------------------------------------------------------------------
#: Seconds a half-built image (``runner-env:building-...``) is left alone: a prepare may be using it.
STAGING_PATIENCE = 3600.0


def created_epoch(created: str) -> float:
    """Docker's RFC 3339 ``Created`` as epoch seconds (0 when unreadable)."""
    try:
        return datetime.fromisoformat(created).timestamp()
    except ValueError:
        return 0.0


@dataclass(frozen=True)
class StoredEnvImage:
    """An env image present in an engine, as pruning sees it."""

    id: str  # full image id
    tags: tuple[str, ...]  # runner-env:KEY; empty when a racing build took the tag over
    env_name: str  # the env it was built for
    created: float  # epoch seconds
    size: int  # bytes, as docker reports them (layers shared with other images included)
    in_use: bool  # some container, running or stopped, was made from it

    @property
    def ref(self) -> str:
        return self.tags[0] if self.tags else self.id.removeprefix("sha256:")[:12]

    @property
    def staging(self) -> bool:
        return any(t.startswith(f"{IMAGE_REPO}:building-") for t in self.tags)

    def describe(self, now: float | None = None) -> str:
        age = age_text((now or time.time()) - self.created)
        what = " (untagged)" if not self.tags else " (unfinished build)" if self.staging else ""
        return f"{self.ref}{what}  env {self.env_name or '?'}  built {age} ago  {size_text(self.size)}"


def _container_images(cli: DockerCLI, ignoring: Iterable[str] = ()) -> set[str]:
    """Ids of the images that containers (any state) were made from, except ``ignoring``'s."""
    r = cli("ps", "-aq", "--no-trunc", timeout=30)
    if not r.ok:
        raise cli.engine_error(r)
    skip = set(ignoring)
    ids = [c for c in r.stdout.split() if c not in skip]
    if not ids:
        return set()
    r = cli("container", "inspect", "--format", "{{.Image}}", *ids, timeout=60)
    if not r.ok and "no such" not in r.stderr.lower():  # a container removed meanwhile is fine
        raise cli.engine_error(r)
    return set(r.stdout.split())


def env_images(cli: DockerCLI, *, ignoring_containers: Iterable[str] = ()) -> list[StoredEnvImage]:
    """The env images the runner built in this engine, oldest first.

    Ours means our labels *and* only ``runner-env:`` tags: an image someone built ``FROM`` an
    env image inherits the labels, but carries the name its owner gave it, and is left alone.
    ``ignoring_containers``: container ids not to count as users (those about to be removed).
    """
    used = _container_images(cli, ignoring_containers)
    out = []
    for img in cli.labelled({L_MANAGED: "1", L_KIND: "env"}, kind="image"):
        tags = tuple(str(t) for t in img.get("RepoTags") or [] if t != "<none>:<none>")
        if any(not t.startswith(f"{IMAGE_REPO}:") for t in tags):
            continue
        labels = (img.get("Config") or {}).get("Labels") or {}
        out.append(StoredEnvImage(
            id=str(img.get("Id", "")), tags=tags, env_name=labels.get(L_ENV_NAME, ""),
            created=created_epoch(str(img.get("Created", ""))), size=int(img.get("Size") or 0),
            in_use=str(img.get("Id", "")) in used))
    return sorted(out, key=lambda i: i.created)


def unused_env_images(cli: DockerCLI, *, keep: int = 1, env_name: str | None = None,
                      ignoring_containers: Iterable[str] = ()) -> list[StoredEnvImage]:
    """Env images safe to remove: no container uses them and they are not among the newest
    ``keep`` of their env name (an unfinished build counts only once it is over
    :data:`STAGING_PATIENCE` old, as does an untagged one, such as a failed build's last step;
    an untagged one never counts as newest). ``env_name``
    limits the answer to one env's images. Works on any engine ``cli`` drives (local or SSH)."""
    if keep < 0:
        raise UserError(f"--keep: must be 0 or more, got {keep}.",
                        "it is how many of the newest images of each env stay (default 1).")
    images = env_images(cli, ignoring_containers=ignoring_containers)
    now = time.time()
    newest: dict[str, list[str]] = {}
    for img in reversed(images):  # newest first
        if img.tags and not img.staging:
            newest.setdefault(img.env_name, []).append(img.id)
    out = []
    for img in images:
        if img.in_use or (env_name is not None and img.env_name != env_name):
            continue
        if (img.staging or not img.tags) and now - img.created < STAGING_PATIENCE:
            continue  # a build may still be using it (untagged: a step of a build in progress)
        if img.id in newest.get(img.env_name, [])[:keep]:
            continue
        out.append(img)
    return out


def remove_env_images(cli: DockerCLI, images: Iterable[StoredEnvImage]) -> list[str]:
    """Remove ``images`` by their ``runner-env:`` tags (by id when untagged) and verify they
    are gone; return the references removed. Never forced: an image a container started from
    since it was listed stays, and the error names it."""
    refs = [ref for img in images for ref in (img.tags or (img.id,))]
    if not refs:
        return []
    r = cli("image", "rm", *refs, timeout=300)
    left = [ref for ref in refs if cli.inspect_one(ref, kind="image") is not None]
    if left:
        raise UserError(
            f"{len(left)} env image(s) are still in the engine on {cli.where}: {', '.join(left)} "
            f"({r.last_error()}).",
            "a container may have started from one since it was listed: run the command again "
            "to see what is unused now.")
    return refs


def prune_report(cli: DockerCLI, *, keep: int, env_name: str | None, yes: bool,
                 ignoring_containers: Iterable[str] = ()) -> list[StoredEnvImage]:
    """Print the unused env images of ``cli``'s engine (see :func:`unused_env_images`) and,
    with ``yes``, remove them and say so. Returns them; the caller says how to remove them
    after a dry run."""
    found = unused_env_images(cli, keep=keep, env_name=env_name,
                              ignoring_containers=ignoring_containers)
    scope = f"env {env_name}" if env_name else "each env"
    if not found:
        print(f"no unused env images on {cli.where} (keeping the newest {keep} of {scope})")
        names = sorted({i.env_name for i in env_images(cli)}) if env_name else []
        if env_name and env_name not in names:
            print(f"  (no image of env {env_name} at all; envs with images there: "
                  f"{', '.join(names) or 'none'})")
        return []
    total = size_text(sum(i.size for i in found))
    print(f"env images on {cli.where} that no container uses, beyond the newest {keep} of "
          f"{scope} ({len(found)}, {total}):")
    now = time.time()
    for img in found:
        print(f"  {img.describe(now)}")
    if yes:
        remove_env_images(cli, found)
        print(f"removed {len(found)} env image(s) ({total}, less layers that kept images share)")
    return found
