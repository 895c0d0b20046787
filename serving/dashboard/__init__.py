"""The live dashboard: a web page and JSON API over what the serving pipeline writes to Redis.

`app` (FastAPI app, live event stream, how to run it), `api` (JSON routes), `schemas` (their response
models), `reader` (Redis and registry reads), `layout` (sensor positions), `command` (`sensorcast
dashboard`), `static/` (the page: plain SVG, no chart library, nothing fetched from a CDN). It reads only;
it never writes to Redis.
"""
