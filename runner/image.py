"""Build the Docker run image locally: debootstrap a minimal Debian, then ``docker import`` it.

No registry is reachable from these machines (DESIGN.md, "Sandboxes here"), so the image that
runs user code is made from a Debian mirror: ``debootstrap --variant=minbase`` with the
language toolchains, packed as a tarball that is cached under a stable directory (building
takes a minute; importing a cached tarball a few seconds), then imported into whatever dockerd
the caller talks to. Deployment and the tests share this module:

    python -m runner.image --docker-host unix:///path/docker.sock [--tag codesync-runner:bookworm]

The toolchains are Debian's (``PACKAGES``, from ``runner/run-image.packages``, which the
Dockerfile's ``run-image`` stage installs too: the same ones ``scripts/system-deps.sh run`` puts
on the host for the bubblewrap sandbox) plus TypeScript, which Debian ships without Node's
type declarations: the project pins ``typescript`` and ``@types/node`` in
``runner/toolchains/typescript`` (npm lockfile), and the image gets the same installed tree at
``/opt/codesync/typescript`` — where bubblewrap binds it read-only — so both backends compile
TypeScript with the same compiler. The tarball's cache key covers the package list and the
lockfile, so a change to either builds a new tarball (the old one is left for an older tag).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

SUITE = "bookworm"
MIRROR = os.environ.get("CODESYNC_DEBIAN_MIRROR", "http://deb.debian.org/debian")


def _listed(name: str) -> tuple[str, ...]:
    """The words of a list file next to this module, ``#`` comments dropped. The Dockerfile's
    ``run-image`` stage reads the same files, so both builds of the image stay one image."""
    text = (Path(__file__).resolve().parent / name).read_text()
    return tuple(word for line in text.splitlines() for word in line.split("#", 1)[0].split())


# The Debian packages (runner/run-image.packages: the toolchains of runner/languages.py, the
# same ones ``scripts/system-deps.sh run`` puts on the host for bubblewrap).
PACKAGES = _listed("run-image.packages")
DEFAULT_TAG = "codesync-runner:bookworm"
CACHE_DIR = Path(os.environ.get("CODESYNC_IMAGE_CACHE", "/var/cache/codesync"))
# Parts of the toolchains no run uses (globs under the rootfs; runner/run-image.prune).
PRUNE = _listed("run-image.prune")
# The vendored npm toolchains (TypeScript) and where the sandboxes see them.
TOOLCHAINS_DIR = Path(__file__).resolve().parent / "toolchains"
SANDBOX_TOOLCHAINS = "/opt/codesync"


class ImageError(RuntimeError):
    """The run image could not be built or imported (message says why)."""


def npm_toolchains(toolchains: Path = TOOLCHAINS_DIR) -> list[Path]:
    """The vendored npm projects (directories with a package-lock.json), sorted."""
    return sorted(p.parent for p in toolchains.glob("*/package-lock.json"))


def ensure_npm_toolchains(toolchains: Path = TOOLCHAINS_DIR) -> list[Path]:
    """``npm ci`` every vendored toolchain whose node_modules is missing or older than its
    lockfile; return those that are installed. Without npm, the missing ones are skipped with
    a warning (the runner then leaves their languages out, with a log line)."""
    ready = []
    for project in npm_toolchains(toolchains):
        marker = project / "node_modules" / ".package-lock.json"
        lock = project / "package-lock.json"
        if not marker.exists() or marker.stat().st_mtime < lock.stat().st_mtime:
            npm = shutil.which("npm")
            if npm is None:
                log.warning("npm is missing: %s is not installed (scripts/system-deps.sh run)", project.name)
                continue
            proc = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--omit=dev"],
                cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )
            if proc.returncode != 0:
                raise ImageError(f"npm ci in {project} failed ({proc.returncode}):\n{proc.stdout[-2000:]}")
        ready.append(project)
    return ready


def rootfs_key(packages: tuple[str, ...] = PACKAGES, suite: str = SUITE, toolchains: list[Path] | None = None) -> str:
    """Cache key: the suite, the package list and the vendored toolchains' lockfiles."""
    parts = [suite, ",".join(sorted(packages)), ",".join(PRUNE)]
    for project in toolchains or []:
        parts.append(f"{project.name}:{hashlib.sha256((project / 'package-lock.json').read_bytes()).hexdigest()}")
    digest = hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]
    return f"rootfs-{suite}-{digest}"


def rootfs_tarball(
    cache_dir: Path = CACHE_DIR, packages: tuple[str, ...] = PACKAGES, suite: str = SUITE, mirror: str = MIRROR
) -> Path:
    """Return the cached rootfs tarball, building it with debootstrap when missing.

    The tarball is written under a temporary name and renamed, so a build cut short never
    leaves a half tarball that a later run would trust.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    toolchains = ensure_npm_toolchains()
    tarball = cache_dir / f"{rootfs_key(packages, suite, toolchains)}.tar"
    if tarball.exists() and tarball.stat().st_size > 0:
        return tarball
    if shutil.which("debootstrap") is None:
        raise ImageError("debootstrap is not installed (apt-get install debootstrap)")
    work = Path(tempfile.mkdtemp(prefix="codesync-rootfs-", dir=cache_dir))
    try:
        rootfs = work / "rootfs"
        cmd = [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(packages)}",
            suite,
            str(rootfs),
            mirror,
        ]
        log.info("building run image rootfs: %s", " ".join(cmd))
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            raise ImageError(f"debootstrap failed ({proc.returncode}):\n{proc.stdout[-3000:]}")
        # Keep the image small: package caches and docs are not needed at run time.
        for sub in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man"):
            target = rootfs / sub
            if target.is_dir():
                for child in target.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child, ignore_errors=True)
                    else:
                        child.unlink(missing_ok=True)
        for pattern in PRUNE:
            for target in rootfs.glob(pattern):
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target, ignore_errors=True)
                else:
                    target.unlink(missing_ok=True)
        # The vendored npm toolchains, where bubblewrap binds them (read-only for the run user).
        for project in toolchains:
            target = rootfs / SANDBOX_TOOLCHAINS.lstrip("/") / project.name
            shutil.copytree(project, target, symlinks=True,
                            ignore=shutil.ignore_patterns(".gitignore", ".package-lock.json"))
        partial = work / "rootfs.tar"
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(partial), "."], check=True)
        os.replace(partial, tarball)
        return tarball
    finally:
        shutil.rmtree(work, ignore_errors=True)


def ensure_image(client, tag: str = DEFAULT_TAG, cache_dir: Path = CACHE_DIR) -> str:
    """Make sure ``tag`` exists in the dockerd behind ``client`` (a ``docker.DockerClient``)."""
    import docker.errors

    try:
        client.images.get(tag)
        return tag
    except docker.errors.ImageNotFound:
        pass
    tarball = rootfs_tarball(cache_dir)
    repository, _, version = tag.partition(":")
    log.info("importing %s as %s", tarball, tag)
    # A file path (not a stream): the SDK then sends it with a Content-Length; its chunked
    # stream upload is rejected by dockerd 20.10 ("invalid byte in chunk length").
    client.api.import_image(src=str(tarball), repository=repository, tag=version or "latest")
    client.images.get(tag)  # raises if the import did not produce it
    return tag


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="build/import the CodeSync runner image")
    parser.add_argument("--docker-host", default=os.environ.get("DOCKER_HOST"), help="e.g. unix:///run/docker.sock")
    parser.add_argument("--tag", default=DEFAULT_TAG)
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR)
    parser.add_argument("--rootfs-only", action="store_true", help="only build the cached rootfs tarball")
    parser.add_argument("--print-packages", action="store_true",
                        help="print the Debian packages of the run image (one line) and exit")
    args = parser.parse_args(argv)
    if args.print_packages:
        print(" ".join(PACKAGES))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        tarball = rootfs_tarball(args.cache_dir)
        print(tarball)
        if args.rootfs_only:
            return 0
        import docker

        client = docker.DockerClient(base_url=args.docker_host) if args.docker_host else docker.from_env()
        print(ensure_image(client, args.tag, args.cache_dir))
        return 0
    except ImageError as exc:
        print(f"runner.image: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
