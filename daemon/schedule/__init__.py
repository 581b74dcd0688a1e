"""When passes run: the shared schedule, claimed by replicas (``scheduler.Scheduler``).

registry (the streams), claims (claim loop, heartbeat, watcher leadership), runner (one
pass: outcome -> next due), rules (pure timing rules), fleet (fair share), sync_watcher
and sync_rule (following Bindbee syncs).
"""
