"""Where task specs live: the embedded Redis registry (``scheduler.registry``) or GoodsHunter's MySQL."""
