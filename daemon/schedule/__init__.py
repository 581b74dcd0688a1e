"""When passes run: the APScheduler loop over every stream."""
