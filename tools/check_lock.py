"""Check that ``requirements.lock`` pins every requirement of ``pyproject.toml`` (issue 10, item 9).

``pyproject.toml`` keeps version ranges for library users; ``requirements.lock`` (compiled by
``pip-compile`` from it, see the README) pins the exact environment ``make install`` builds, so two
fresh clones get the same packages. ``make lint`` runs this check: every runtime requirement and
every requirement of the ``notebooks`` and ``dev`` extras must appear in the lock as
``name==version`` with a version inside its range, and every line of the lock must be such a pin.

Usage: ``python tools/check_lock.py [--pyproject pyproject.toml] [--lock requirements.lock]``;
exit status 1 and one line per problem when the two disagree.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

LOCKED_EXTRAS = ("notebooks", "dev")  # what `make install` installs besides the package
REGENERATE = (
    "pip-compile --strip-extras --no-emit-index-url --no-emit-find-links "
    "--extra notebooks --extra dev -o requirements.lock pyproject.toml"
)
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)\s*$")


def read_lock(path: Path) -> dict[str, Version]:
    """``{canonical name: pinned version}``; raises ValueError naming a line that is no pin."""
    pins: dict[str, Version] = {}
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _PIN.match(line)
        if m is None:
            raise ValueError(f"{path}:{n}: not an exact pin 'name==version': {raw!r}")
        pins[canonicalize_name(m[1])] = Version(m[2])
    return pins


def requirements(pyproject: Path, extras: tuple[str, ...] = LOCKED_EXTRAS) -> list[Requirement]:
    """The runtime requirements and those of ``extras``, markers evaluated for this machine."""
    project = tomllib.loads(pyproject.read_text())["project"]
    raw = list(project.get("dependencies", []))
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            raise ValueError(f"{pyproject}: no optional-dependencies extra {extra!r}")
        raw += optional[extra]
    reqs = [Requirement(r) for r in raw]
    return [r for r in reqs if r.marker is None or r.marker.evaluate({"extra": ""})]


def problems(pyproject: Path, lock: Path) -> list[str]:
    """Every disagreement between ``pyproject`` and ``lock`` (empty when they match)."""
    if not lock.is_file():
        return [f"{lock} is missing; regenerate it: {REGENERATE}"]
    try:
        pins = read_lock(lock)
    except ValueError as err:
        return [str(err)]
    out = []
    for req in requirements(pyproject):
        name = canonicalize_name(req.name)
        if name not in pins:
            out.append(f"{req} (from {pyproject.name}) is not pinned in {lock.name}")
        elif not req.specifier.contains(pins[name], prereleases=True):
            out.append(f"{lock.name} pins {name}=={pins[name]}, outside {req} ({pyproject.name})")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"))
    parser.add_argument("--lock", type=Path, default=Path("requirements.lock"))
    args = parser.parse_args(argv)
    found = problems(args.pyproject, args.lock)
    for line in found:
        print(f"lock check: {line}", file=sys.stderr)
    if found:
        print(f"lock check: regenerate the lock: {REGENERATE}", file=sys.stderr)
        return 1
    print(f"lock check: {args.lock} pins all requirements of {args.pyproject}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
