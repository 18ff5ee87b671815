"""``mmdiag serve``: a finished run as a local HTTP service with a case page (FastAPI + uvicorn).

:mod:`~mmdiag.serve.uploads` checks uploads before decoding, :mod:`~mmdiag.serve.service` predicts and explains one
case with the run, :mod:`~mmdiag.serve.app` is the HTTP layer, ``static/`` the page.
"""
