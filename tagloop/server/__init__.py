"""``tagloop serve``: AUTOMATIC1111's HTTP API (and the WD14 tagger extension's), tagloop's own
routes and a web page for the loop, over the same Python API as the command line.

FastAPI and uvicorn are an optional extra (``pip install "tagloop[server]"``); importing this
package costs neither. Build an app with :func:`tagloop.server.app.create_app` and a
:class:`tagloop.server.settings.ServerSettings`.
"""
