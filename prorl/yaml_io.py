"""The one YAML loader of prorl: training configs (`prorl train --config`), data recipes (`prorl data build`) and
the demo recipe are all read with `load_yaml`, which is PyYAML's safe loader with two corrections:

- YAML 1.2's float rule: PyYAML follows YAML 1.1, whose floats need a dot, so `1e-1` or `2e-6` were strings (a
  list value such as `dynamic_sampling_accuracy_window: [0, 1e-1]` refused, a learning rate left to argparse to
  convert). Ints, YAML 1.1 floats and quoted scalars resolve as before.
- unique keys: a mapping that gives a key twice is a `DuplicateKeyError` naming the key and both lines, where
  PyYAML would keep the last value without a word (a second source named like the first replacing it, a config's
  `learning_rate` written twice). Merge keys (`<<: *defaults`) still merge: only a mapping's own keys are compared.
"""

from __future__ import annotations

import re
from typing import IO, Any

import yaml


class DuplicateKeyError(yaml.YAMLError):
    """A YAML mapping that gives a key twice (the YAML spec requires the keys of a mapping to be unique)."""

    def __init__(self, key: Any, first: yaml.Mark, second: yaml.Mark):
        lines = (f"on line {first.line + 1}" if first.line == second.line
                 else f"at lines {first.line + 1} and {second.line + 1}")
        super().__init__(f"key {key!r} is given twice in the same mapping, {lines} (rename or remove one)")
        self.key, self.lines = key, (first.line + 1, second.line + 1)


class Loader(yaml.SafeLoader):
    """`yaml.SafeLoader` with YAML 1.2 floats and unique mapping keys (see the module's docstring)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Mark] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark)
                except TypeError:  # an unhashable key: SafeLoader's own error says so
                    continue
                if first is not key_node.start_mark:
                    raise DuplicateKeyError(key, first, key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


Loader.add_implicit_resolver(  # tried after PyYAML's own int and float rules, for the same first characters
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
               r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def load_yaml(stream: str | IO[str]) -> Any:
    """A YAML document read with `Loader` (safe: plain data only)."""
    return yaml.load(stream, Loader=Loader)
