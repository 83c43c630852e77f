"""What becomes of a crawl's results outside the queue: the e-mail notifications of GoodsHunter events."""
