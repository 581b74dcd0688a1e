"""What operators see: /healthz, /readyz and /metrics (``health``), the webhook receiver
(``webhook``), the metrics themselves (``metrics``); both listeners are uvicorn servers
on threads of their own (``_server``)."""
