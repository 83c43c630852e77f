"""GoodsHunter scheduler: a Redis Streams task queue and the daemon that drives the crawler."""

__version__ = "0.1.0"
