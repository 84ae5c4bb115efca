"""The root of every error cdn_async raises, in a module of its own so that the data below
the errors can name it.

``PurgeReport.failed`` (``_models.py``) holds errors, and ``PurgeError`` (``errors.py``) holds a
``PurgeReport``. With the root here, ``errors`` imports the models and the models import only
this module: no two modules import each other, at run time or for type checking. Users import
it as ``cdn_async.errors.CDNError`` (``errors.py`` sets its ``__module__``).
"""

__all__ = ["CDNError"]


class CDNError(Exception):
    """The root of every error cdn_async raises."""
