"""The command-line layer the `anygpt-*` commands share: one flag style (`flags`), the gin front-end
(`gin_config`), reading a run directory's configuration (`runs`) and the flags of a generation
session (`generation_flags`). Each command in `tools/` is a thin `main` over these; the library
below knows nothing of flags or gin command lines. Importing this package imports nothing.
"""
