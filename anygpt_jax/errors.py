"""The one base class of the errors a user can act on (a run's configuration, inputs or machine).

A command reports such an error as its message alone, one paragraph that names the file, setting or
path and the cause; anything else is a bug and keeps its traceback. Each module still raises its
own class (subclassing this one and the builtin it always was), so callers catch what they know.
"""


class UserError(Exception):
  """An error in the run's configuration, inputs or environment: reported without a traceback."""
