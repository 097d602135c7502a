"""Gin bindings checked against the types their configurable expects, before anything uses them.

`--gin.BATCH_SIZE="'eight'"` would otherwise fail deep inside with "not all arguments converted during
string formatting"; here it is "TrainInput.batch_size = %BATCH_SIZE is 'eight' (str): expected an int".
"""

from __future__ import annotations

from typing import Any, Mapping

import gin

from anygpt_jax.errors import UserError


class BindingTypeError(UserError, TypeError):
  """A gin binding of the wrong type: names the binding, the macro it came from and the type expected."""


def _source(binding: str) -> str:
  """`TrainInput.batch_size = %BATCH_SIZE` when a macro gave the value, else the binding's name."""
  try:
    bound = gin.query_parameter(binding)
  except ValueError:  # not bound in gin: a default or a direct call
    return binding
  return f"{binding} = {bound}" if isinstance(bound, gin.config.ConfigurableReference) else binding


def check_types(configurable: str, values: Mapping[str, Any], expected: Mapping[str, type | tuple[type, ...]]) -> None:
  """Raises BindingTypeError for the first of `values` (argument -> value) that is not of its
  `expected` type (None is allowed where the type tuple holds type(None); bool is no int)."""
  for name, kinds in expected.items():
    value = values[name]
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
      wanted = " or ".join("None" if k is type(None) else f"a{'n' if k.__name__[0] in 'aeiou' else ''} {k.__name__}"
                           for k in kinds)
      raise BindingTypeError(f"{_source(f'{configurable}.{name}')} is {value!r} ({type(value).__name__}): "
                             f"expected {wanted}")
