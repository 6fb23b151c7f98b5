"""Small version pairs and host applications for the routing tests.

``make_pair(root)`` writes two versions of one package, ``old`` and ``new``, whose callables
return the version's label, and loads them with ``dualrun.load``. ``write_host(root)`` writes a
host application module ``myapp_<n>/checkout.py`` whose entry points return ``"host"``.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import dualrun

_ids = itertools.count()

VERSION_INIT = """\
VERSION = {label!r}
"""

# Every callable returns the label of the version that ran it, so a test can see who served.
VERSION_ENGINE = '''\
"""The engine of one version."""

import asyncio

from {name} import VERSION


def quote(cart, *, discount=0):
    """Quote a cart: the sum of its items, less the discount."""
    return (VERSION, sum(cart) - discount)


def version():
    return VERSION


async def aquote(cart):
    """Quote a cart, asynchronously."""
    await asyncio.sleep(0)
    return (VERSION, sum(cart))


def items(n):
    """Yield n items."""
    for i in range(n):
        yield (VERSION, i)
    return VERSION


async def aitems(n):
    for i in range(n):
        await asyncio.sleep(0)
        yield (VERSION, i)


def boom():
    raise ValueError(VERSION)


def describe(obj, x):
    """A plain function that a host method may be routed to."""
    return (VERSION, type(obj).__name__, x)


class Engine:
    """An engine of this version."""

    label = VERSION

    def __init__(self, rate=1):
        self.rate = rate

    def price(self, x):
        """Price x at this engine's rate."""
        return (VERSION, x * self.rate)

    async def aprice(self, x):
        await asyncio.sleep(0)
        return (VERSION, x * self.rate)

    def walk(self, n):
        for i in range(n):
            yield (VERSION, i * self.rate)

    @classmethod
    def create(cls, rate):
        """Make an engine of this version."""
        return cls(rate)

    @classmethod
    def which(cls):
        return (VERSION, cls.label)

    @staticmethod
    def tax(x):
        """Tax on x."""
        return (VERSION, x // 10)

    @staticmethod
    async def atax(x):
        await asyncio.sleep(0)
        return (VERSION, x // 10)


def make_engine(rate=1):
    return Engine(rate)
'''

# Differences between the versions, for the error tests.
OLD_EXTRA = """

def only_old():
    return VERSION


def flavour():
    return VERSION


class Shifty:
    def move(self):
        return VERSION
"""

NEW_EXTRA = """

def only_new():
    return VERSION


async def flavour():
    return VERSION


class Shifty:
    @staticmethod
    def move():
        return VERSION
"""


def unique(prefix: str) -> str:
    """A module name no other test uses."""
    return f"{prefix}_{next(_ids)}"


def write_versions(root: Path, name: str) -> tuple[Path, Path]:
    """Write the old and the new version of package ``name`` under ``root``."""
    dirs = []
    for label, extra in (("old", OLD_EXTRA), ("new", NEW_EXTRA)):
        package = root / label / name
        package.mkdir(parents=True)
        (package / "__init__.py").write_text(VERSION_INIT.format(label=label))
        (package / "engine.py").write_text(VERSION_ENGINE.format(name=name) + extra)
        dirs.append(root / label)
    return dirs[0], dirs[1]


def make_pair(root: Path, name: str | None = None) -> dualrun.VersionPair:
    """Write and load a version pair; the caller unloads it."""
    name = name or unique("pricing_rt")
    old, new = write_versions(root, name)
    return dualrun.load(name, old=str(old), new=str(new))


HOST_CHECKOUT = '''\
"""The host application's checkout: the entry points that get intercepted."""

import asyncio


def quote(cart, *, discount=0):
    """The host's quote."""
    return ("host", sum(cart))


async def aquote(cart):
    await asyncio.sleep(0)
    return ("host", sum(cart))


def items(n):
    yield ("host", 0)


class Checkout:
    """A host class whose methods get intercepted."""

    rate = 3

    def price(self, x):
        return ("host", x)

    def describe(self, x):
        return ("host", x)

    async def aprice(self, x):
        return ("host", x)

    @classmethod
    def create(cls, rate):
        return ("host", rate)

    @staticmethod
    def tax(x):
        return ("host", x)


class Base:
    rate = 5

    def price(self, x):
        return ("host-base", x)


class Sub(Base):
    pass
'''


# A module that binds the host entry point early, the caveat of interception.
HOST_VIEWS = """\
from .checkout import quote


def view(cart):
    return quote(cart)
"""


def write_host(root: Path) -> str:
    """Write a host package ``myapp_<n>`` with a ``checkout`` module; return the package name.

    The caller puts ``root`` on ``sys.path`` (``monkeypatch.syspath_prepend``) and, at the end,
    calls :func:`forget_host`.
    """
    name = unique("myapp")
    package = root / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "checkout.py").write_text(HOST_CHECKOUT)
    (package / "views.py").write_text(HOST_VIEWS)
    return name


def forget_host(name: str) -> None:
    """Remove the host package's modules from ``sys.modules``."""
    for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[module]


def target(versions: dualrun.VersionPair, qualname: str, module: str = "engine") -> str:
    """The ``"pkg.module:qualname"`` target string in the pair's package."""
    return f"{versions.old.name}.{module}:{qualname}"
