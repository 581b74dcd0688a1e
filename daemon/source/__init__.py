"""Where records come from: Bindbee over one HTTP transport.

transport (the one httpx pool, retry policy, error translation, page parser), lanes (what
a request waits for: a connector's slots and rate limiter, or nothing for the
organisation's connectors list), client (pages and records by id), items (which items the
differ can use), pagination (cursor walks, loop detection), ratelimit, connectors (the
connectors list) and discovery (which listed connectors to follow).
"""
