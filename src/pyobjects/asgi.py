"""Serve a :class:`pyobjects.Worker` over HTTP and WebSockets with any ASGI server.

``App(worker, *, storage=None, **runtime_options)`` is an ASGI 3 application:

.. code-block:: python

    from pyobjects.asgi import App
    from pyobjects.storage import SQLiteBackend

    app = App(worker, storage=SQLiteBackend("./.pyobjects"))
    # uvicorn app:app   (or: pyobjects serve app:worker)
"""

from ._asgi import App as App

__all__ = ("App",)

App.__module__ = __name__
