"""Everything about Cube: the HTTP client that speaks to it, the headers that cross the
broker, the credential-to-token decision of the proxy, queries, and the callback Cube
calls back into."""
