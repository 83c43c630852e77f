"""Tools around the product, not the product: the demo, the private Redis launcher the demo and the
tests use, and the proto code generator."""
