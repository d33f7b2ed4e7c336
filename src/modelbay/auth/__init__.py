"""API keys: who may call the server, for what, and how often (issue 11, item 1).

  keys.py    the key file (`modelbay keys create / list / revoke`): keys made, hashed, stored
  limit.py   the per-key request-rate limit (a token bucket)
  access.py  the one check every door makes (`authorize`)

Nothing here imports a web framework or gRPC: the doors read the key from their wire (HTTP
headers, gRPC metadata) and map the errors (Unauthenticated, Forbidden, TooManyRequests) to
their status codes.
"""
