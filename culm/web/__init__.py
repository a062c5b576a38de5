"""``culm serve``: the REST API, its tokens and roles, live updates and the web console.

Everything here goes through the public API (:mod:`culm.api`, :class:`culm.Runtime`); the few reads
the public API does not offer yet live in :mod:`culm.web.adapter`, the only module that changes when
they do. Needs the ``web`` extra (FastAPI, uvicorn, prometheus-client).
"""
