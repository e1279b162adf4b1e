"""One way to choose a backend: a small registry per concern.

A concern (the signaling hub, the persistence lease, the runner's sandbox, the login and mail
rate limiters, the OAuth flow store) has interchangeable backends. Each concern's module
makes one :class:`Backends`, registers a factory per backend name, and says which name the
settings choose; callers ask ``BACKENDS.create(settings, ...)`` and get the interface —
they never test a setting or a backend's name themselves.

Most concerns follow one rule (docs/configuration.md): with ``CODESYNC_REDIS_URL`` set, the
state several processes must share lives in Redis (:func:`shared_or`); the sandbox is chosen
by ``CODESYNC_SANDBOX``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from codesync.settings import Settings

T = TypeVar("T")
Factory = Callable[..., T]


def shared_or(local: str) -> Callable[[Settings], str]:
    """The rule for shared state: ``"redis"`` when Redis is configured, else ``local``."""

    def choose(settings: Settings) -> str:
        return "redis" if settings.redis_url else local

    return choose


class Backends(Generic[T]):
    """The backends of one concern by name, and the rule that picks one from the settings."""

    def __init__(self, concern: str, choose: Callable[[Settings], str]) -> None:
        self.concern = concern
        self._choose = choose
        self._factories: dict[str, Factory[T]] = {}

    def register(self, name: str) -> Callable[[Factory[T]], Factory[T]]:
        """Decorator: ``factory(settings, *args, **kw)`` builds the backend ``name``."""

        def add(factory: Factory[T]) -> Factory[T]:
            if name in self._factories:
                raise ValueError(f"{self.concern} backend {name!r} is registered twice")
            self._factories[name] = factory
            return factory

        return add

    @property
    def names(self) -> list[str]:
        return sorted(self._factories)

    def chosen(self, settings: Settings) -> str:
        """The backend name these settings select (a clear error when there is none by that name)."""
        name = self._choose(settings)
        if name not in self._factories:
            raise ValueError(f"no {self.concern} backend {name!r}; known: {', '.join(self.names)}")
        return name

    def create(self, settings: Settings, *args: Any, **kw: Any) -> T:
        """The backend the settings choose, built by its factory."""
        return self._factories[self.chosen(settings)](settings, *args, **kw)
