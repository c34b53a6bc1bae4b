"""The error of a load that cannot go on; its message names the file, table, option or line."""

from idxr_pg.errors import IdxrError


class LoadError(IdxrError):
    """A load that cannot start or continue (bad option, missing file, unknown table...)."""
