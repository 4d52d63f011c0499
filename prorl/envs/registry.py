"""The environment registry: `register`, `make`, `list_envs`, `spec`.

Like Gymnasium, an entry point is either a class/factory or a string "module:attr" imported on first `make`.
Third-party packages add environments through the entry-point group `prorl.envs`: each entry point names either
an Env class (registered under the entry point's name) or a zero-argument function that calls `prorl.register`.
"""

from __future__ import annotations

import difflib
import importlib
import logging
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Callable

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "prorl.envs"


@dataclass
class EnvSpec:
    id: str
    entry_point: Any  # a class, a callable returning an Env, or "module:attr"
    kwargs: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    def load(self) -> Callable[..., Any]:
        if isinstance(self.entry_point, str):
            module, _, attr = self.entry_point.partition(":")
            obj = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
            return obj
        return self.entry_point


_REGISTRY: dict[str, EnvSpec] = {}
# Functions that register a family of ids on first lookup (e.g. every reasoning-gym task as `logic/<name>`),
# so `import prorl` stays fast.
_PROVIDERS: list[Callable[[], None]] = []
_plugins_loaded = False


def add_provider(fn: Callable[[], None]) -> None:
    """Run `fn` (which calls `register`) lazily, before the first `make`/`spec`/`list_envs`."""
    _PROVIDERS.append(fn)


def register(env_id: str, entry_point: Any = None, *, description: str = "", override: bool = False, **kwargs):
    """Register an environment id. Usable directly or as a class decorator:

        prorl.register("my/env", "my_pkg.envs:MyEnv", difficulty=2)

        @prorl.register("my/env")
        class MyEnv(prorl.Env): ...
    """
    if not isinstance(env_id, str) or not env_id:
        raise ValueError(f"env_id must be a non-empty string, got {env_id!r}")

    def _do(ep):
        if isinstance(ep, str) and not all(ep.partition(":")[::2]) or not isinstance(ep, str) and not callable(ep):
            raise ValueError(f"{env_id!r}: the entry point must be an Env class, a function returning an Env or a "
                             f"'module:attr' string, got {ep!r}")
        if env_id in _REGISTRY and not override and not _same_definition(_REGISTRY[env_id].entry_point, ep):
            holder = _describe(_REGISTRY[env_id].entry_point)
            raise ValueError(f"environment {env_id!r} is already registered, as {holder} (a built-in, a "
                             f"`prorl.envs` plugin or an earlier register call): pass override=True "
                             f"to replace it, or choose another id")
        desc = description or (_first_line(getattr(ep, "description", "") or getattr(ep, "__doc__", "") or "")
                               if not isinstance(ep, str) else "")
        _REGISTRY[env_id] = EnvSpec(env_id, ep, dict(kwargs), desc)
        return ep

    if entry_point is None:
        return _do
    return _do(entry_point)


def _same_definition(old: Any, new: Any) -> bool:
    """The same entry point, or the same class/function defined again (a re-run notebook cell, a reloaded module)."""
    if old is new:
        return True
    if isinstance(old, str) or isinstance(new, str):
        return old == new
    return (getattr(old, "__module__", None), getattr(old, "__qualname__", None)) == \
        (getattr(new, "__module__", None), getattr(new, "__qualname__", None)) and hasattr(new, "__qualname__")


def _describe(entry_point: Any) -> str:
    """An entry point as `module:qualname` (a class or function) or as the string it is."""
    if isinstance(entry_point, str):
        return repr(entry_point)
    return f"{getattr(entry_point, '__module__', '?')}:{getattr(entry_point, '__qualname__', entry_point)!s}"


def _registered_as(env_id: str, obj: Any) -> bool:
    """Whether `env_id` is registered with `obj` (directly, or as the "module:attr" string that names it)."""
    entry = _REGISTRY[env_id].entry_point
    if _same_definition(entry, obj):
        return True
    try:
        return isinstance(entry, str) and _REGISTRY[env_id].load() is obj
    except Exception:
        return False


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0].strip() if text.strip() else ""


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for provider in _PROVIDERS:
        try:
            provider()
        except Exception as exc:
            log.warning("environment provider %s failed: %r", getattr(provider, "__name__", provider), exc)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plugin must not break prorl
            log.warning("prorl.envs plugin %r failed to load: %r", ep.name, exc)
            continue
        if isinstance(obj, type):
            if ep.name not in _REGISTRY:
                register(ep.name, obj)
            elif not _registered_as(ep.name, obj):  # the id is taken (a built-in, another plugin): say so
                log.warning("prorl.envs plugin %r (%s.%s) is not registered: the id is already taken by %r", ep.name,
                            obj.__module__, obj.__qualname__, _REGISTRY[ep.name].entry_point)
        elif callable(obj):
            try:
                obj()
            except Exception as exc:
                log.warning("prorl.envs plugin %r failed to register: %r", ep.name, exc)


def reload_plugins() -> None:
    """Re-scan the `prorl.envs` entry points (after installing a plugin in a running process)."""
    global _plugins_loaded
    _plugins_loaded = False
    _load_plugins()


def spec(env_id: str) -> EnvSpec:
    _load_plugins()
    if env_id not in _REGISTRY:
        raise KeyError(f"unknown environment {env_id!r}{_similar(env_id)} ({len(_REGISTRY)} registered: see `prorl "
                       f"envs`; an environment of your own is seen by the prorl commands once installed in a package "
                       f"under the entry-point group {ENTRY_POINT_GROUP!r})")
    return _REGISTRY[env_id]


def _similar(env_id: str) -> str:
    """`: did you mean ...?` with the registered ids closest to `env_id` (a typo, a wrong case), else ""."""
    close = difflib.get_close_matches(env_id, _REGISTRY, n=3, cutoff=0.7)
    close = close or [k for k in _REGISTRY if k.lower() == env_id.lower()]
    if close:
        return f": did you mean {' or '.join(map(repr, close))}?"
    family = env_id.split("/")[0] + "/"  # 'code/humaneval': the ids of the 'code/' family, if there are any
    members = sorted(k for k in _REGISTRY if k.startswith(family) or k == family[:-1]) if "/" in env_id else []
    return f"; {family[:-1]!r} ids: {members[:6]}{' ...' if len(members) > 6 else ''}" if members else ""


def make(env_id: str, **kwargs):
    """Build the environment registered as `env_id`; keyword arguments override the registered defaults."""
    s = spec(env_id)
    try:
        env = s.load()(**{**s.kwargs, **kwargs})
    except KeyError as exc:  # not "unknown environment": callers read a KeyError from make() as that
        raise RuntimeError(f"environment {env_id!r} failed to build: {exc!r}") from exc
    env.id = env_id
    return env


def list_envs() -> dict[str, str]:
    """All registered ids with their one-line descriptions, sorted."""
    _load_plugins()
    return {k: _REGISTRY[k].description for k in sorted(_REGISTRY)}
