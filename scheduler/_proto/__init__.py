"""Generated from proto/ by `python -m scheduler.protogen`; do not edit by hand."""
