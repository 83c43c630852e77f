"""The crawler service as the daemon sees it: the gRPC client with its retries and cancellation, the
circuit breaker, and the mapping between task specs and the proto."""
