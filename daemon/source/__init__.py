"""Where records come from: the Bindbee API client, its pagination and its rate limiter."""
