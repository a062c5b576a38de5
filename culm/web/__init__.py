"""``culm serve``: the REST API, its tokens and roles, live updates and the web console.

Everything here goes through the public API (:mod:`culm.api`, :class:`culm.Runtime` and its change
feed); tokens keep their own table. Needs the ``web`` extra (FastAPI, uvicorn, prometheus-client).
"""
