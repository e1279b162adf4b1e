"""Build the Docker run image locally: debootstrap a minimal Debian, then ``docker import`` it.

No registry is reachable from these machines (DESIGN.md, "Sandboxes here"), so the image that
runs user code is made from a Debian mirror: ``debootstrap --variant=minbase`` with the
language toolchains, packed as a tarball that is cached under a stable directory (building
takes a minute; importing a cached tarball a few seconds), then imported into whatever dockerd
the caller talks to. Deployment and the tests share this module:

    python -m runner.image --docker-host unix:///path/docker.sock [--tag codesync-runner:bookworm]
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
PACKAGES = ("python3", "nodejs", "gcc", "libc6-dev")
DEFAULT_TAG = "codesync-runner:bookworm"
CACHE_DIR = Path(os.environ.get("CODESYNC_IMAGE_CACHE", "/var/cache/codesync"))


class ImageError(RuntimeError):
    """The run image could not be built or imported (message says why)."""


def rootfs_key(packages: tuple[str, ...] = PACKAGES, suite: str = SUITE) -> str:
    digest = hashlib.sha256(f"{suite}|{','.join(sorted(packages))}".encode()).hexdigest()[:12]
    return f"rootfs-{suite}-{digest}"


def rootfs_tarball(
    cache_dir: Path = CACHE_DIR, packages: tuple[str, ...] = PACKAGES, suite: str = SUITE, mirror: str = MIRROR
) -> Path:
    """Return the cached rootfs tarball, building it with debootstrap when missing.

    The tarball is written under a temporary name and renamed, so a build cut short never
    leaves a half tarball that a later run would trust.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    tarball = cache_dir / f"{rootfs_key(packages, suite)}.tar"
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
    args = parser.parse_args(argv)
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
