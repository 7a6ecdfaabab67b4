"""The HTTP layer around the handlers: the one middleware (request context, errors, access
log), CORS, the brute-force guard, reading requests, and the OpenAPI document."""
