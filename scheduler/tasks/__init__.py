"""Where task specs live: the embedded Redis registry (``scheduler.tasks.registry``) or GoodsHunter's MySQL."""
