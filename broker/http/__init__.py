"""The HTTP layer around the handlers: the request context around every handler (request
ID, errors, access log), CORS, the brute-force guard, reading requests, and the OpenAPI
document."""
